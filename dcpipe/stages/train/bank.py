"""DeepCluster-v2's memory bank: the next round's feature store, filled by this round's training.

SwAV's main_deepclusterv2.py clusters the projections that the previous epoch's training forward
passes produced, with no feature-extraction pass. Here a v2 round with `[train] features = "bank"`
records, for every sample it trains on, the L2-normalised mean of the projections of its two
full-size crops (crops 0 and 1, SwAV's crops_for_assign; SwAV keeps one bank per crop and
clusters head h on crop h mod 2, the store holds one row per sample, and the mean of both views
is the less noisy estimate of the image's embedding). A sample seen again later in the round
(reassign > 1) keeps its last row, so the bank holds the round's last epoch.

On disk, never in RAM: each rank writes the rows of its own shards (positions s % world == rank,
the shards it trains on) into its own part, `ckpt/bank.<rank>.npy` (a memmap, N x dim in the
store's dtype), flushed at every checkpoint before the checkpoint is written. A run resumed from
`ckpt/last.pt` keeps the rows written before it and recomputes the later ones bit for bit (the
training itself resumes exactly). At the end rank 0 assembles the parts into a feature store of
the extract stage's format with the round's own store's layout (shards, offsets, chunk_rows,
keys, valid, true labels, failed rows: the rows the round was clustered from), built under
`ckpt/` and renamed to `bank.zarr` once complete. The pipeline moves it into round r+1 as its
`features.zarr`. A row the round's store holds that training never recorded stops the assembly:
it never becomes a zero row.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcpipe.errors import FileFormatError
from dcpipe.shards.atomic import fsync_dir
from dcpipe.shards.reader import ShardInfo
from dcpipe.stages.common.featurestore import ROW_ARRAYS, create_store, open_store
from dcpipe.stages.common.labels import LabelsError
from dcpipe.stages.train import outputs


@dataclass(frozen=True)
class BankSpec:
    """What the bank's store is made like: `layout`, the round's own feature store (the one its
    labels come from); `dtype`, of the features ([extract] dtype)."""
    layout: Path
    dtype: str = "float16"


def check_layout(spec: BankSpec, shards: list[ShardInfo]) -> None:
    """The round's store must hold exactly these shards, complete (before any training)."""
    store = open_store(spec.layout)
    names = [s.name for s in shards]
    if not store.complete or store.attrs.get("shard_names") != names or \
            store.shard_count.tolist() != [s.n_samples for s in shards]:
        raise LabelsError(f"{spec.layout} is not the complete feature store of this round's "
                          f"shards: the memory bank copies its layout; extract the round first")


def part_path(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / outputs.CHECKPOINT.parent / f"bank.{rank}.npy"


def part_starts(counts: list[int], rank: int, world: int) -> tuple[np.ndarray, int]:
    """(first row in rank `rank`'s part of each shard position, -1 where another rank holds it;
    the part's length): the rank's shards back to back, in position order."""
    starts = np.full(len(counts), -1, np.int64)
    total = 0
    for s in range(rank, len(counts), world):
        starts[s], total = total, total + counts[s]
    return starts, total


class BankPart:
    """One rank's rows of the bank, on disk."""

    def __init__(self, out_dir: Path, shards: list[ShardInfo], rank: int, world: int, dim: int,
                 dtype: str, fresh: bool):
        """`fresh`: the round's training starts at step 0 (a new, empty part); otherwise it
        resumes from a checkpoint and the part written before it must be there."""
        self.path = part_path(out_dir, rank)
        starts, total = part_starts([s.n_samples for s in shards], rank, world)
        self.start_by_index = np.full(max(s.index for s in shards) + 1, -1, np.int64)
        self.start_by_index[[s.index for s in shards]] = starts
        shape = (total, dim)
        if fresh:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.rows = np.lib.format.open_memmap(self.path, "w+", np.dtype(dtype), shape)
        else:
            self.rows = _open_part(self.path, shape, np.dtype(dtype))

    def record(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Rows (n, dim) of the samples `ids` (n, 2: ShardInfo.index, row in the shard)."""
        if len(ids):
            ids = ids.numpy()
            self.rows[self.start_by_index[ids[:, 0]] + ids[:, 1]] = rows.cpu().numpy()

    def flush(self) -> None:
        """Make the rows written so far durable (before the checkpoint that counts on them)."""
        if len(self.rows):
            self.rows.flush()


def _open_part(path: Path, shape: tuple, dtype: np.dtype) -> np.ndarray:
    try:
        rows = np.lib.format.open_memmap(path, "r+")
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{path}: the memory bank of the checkpoint to resume is missing "
                              f"or damaged ({exc}); delete the ckpt folder to train the round "
                              "again") from exc
    if rows.shape != shape or rows.dtype != dtype:
        raise FileFormatError(f"{path} holds {rows.shape} {rows.dtype} rows, the round needs "
                              f"{shape} {dtype}; delete the ckpt folder to train the round again")
    return rows


def assemble(spec: BankSpec, out_dir: Path, world: int, model_info: dict) -> Path:
    """The ranks' parts -> `out_dir/bank.zarr`, a complete feature store (rank 0, after every
    rank flushed its part). Built under ckpt/ and renamed into place: it appears whole or not."""
    final = Path(out_dir) / outputs.BANK
    layout = open_store(spec.layout)
    staging = part_path(out_dir, 0).with_name(outputs.BANK)
    shutil.rmtree(staging, ignore_errors=True)  # from a run killed while assembling
    counts = layout.shard_count.tolist()
    create_store(staging, counts=counts, dim=model_info["feature_dim"], dtype=spec.dtype,
                 chunk_rows=layout.chunk_rows,
                 attrs={"shard_names": layout.attrs["shard_names"],
                        "class_names": layout.attrs["class_names"], "model": model_info})
    store = open_store(staging, mode="r+")
    parts = [np.load(part_path(out_dir, q), mmap_mode="r") for q in range(world)]
    starts = [part_starts(counts, q, world)[0] for q in range(world)]  # once, not once a shard
    for s in range(len(counts)):
        first = starts[s % world][s]
        _copy_shard(layout, store, s, parts[s % world][first:first + counts[s]])
    store.set_complete()
    shutil.rmtree(final, ignore_errors=True)  # the same bank from a run killed after the rename
    os.rename(staging, final)
    fsync_dir(final.parent)
    return final


def _copy_shard(layout, store, s: int, rows: np.ndarray) -> None:
    """Shard s: the layout store's per-row arrays, keys and done record with the bank's rows,
    chunk by chunk."""
    start, stop = layout.shard_rows(s)
    size = layout.chunk_rows
    for lo in range(start, stop, size):
        arrays = {name: layout.read(name, lo, lo + size) for name in ROW_ARRAYS}
        got = rows[lo - start:min(lo + size, stop) - start]
        missing = np.flatnonzero(arrays["valid"][:len(got)].astype(bool) != (got != 0).any(axis=1))
        if len(missing):
            row = lo - start + int(missing[0])
            raise LabelsError(f"the memory bank has no row for {len(missing)} samples of shard "
                              f"{layout.attrs['shard_names'][s]} that {layout.path} holds "
                              f"(first: row {row}): were they labelled? Set [train] features = "
                              "\"extract\" to extract the next round instead")
        features = np.zeros((size, store.dim), dtype=rows.dtype)
        features[:len(got)] = got
        store.write_rows(lo, {"features": features, **arrays})
    store.commit_shard(s, layout.keys(s), layout.done_record(s))
