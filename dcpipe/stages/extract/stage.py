"""Extract stage: stream every shard through the convnet into the round's feature store.

Entry point: `extract(shards, store_path, ...)`. Round 0 (no model_path) uses a seeded random
init; later rounds load the previous round's model. Central crop, eval mode, no augmentation.

Crash safety: the layout exists before any feature (featurestore.create_store); a shard's rows
are written chunk by chunk, then its keys, then its done marker (atomic). A rerun skips shards
with a marker and rewrites every chunk of the others in full, so a run killed at any point then
rerun gives the same store as an uninterrupted run. Under torchrun, rank r takes the shards
s with s % world == r; rank 0 creates the layout before a barrier and marks the store complete
after the last one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dcpipe.errors import DcpipeError
from dcpipe.stages.common.distributed import ProcessGroup
from dcpipe.stages.common.featurestore import (FORMAT, ROW_ARRAYS, FeatureStore, create_store,
                                               open_store)
from dcpipe.stages.common.models import load_model, normalize_batch, random_init
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.common.precision import autocast, autocast_dtype
from dcpipe.stages.common.workererrors import raised
from dcpipe.stages.extract.reader import ShardBatches, ShardJob
from dcpipe.stages.extract.settings import ExtractSettings

log = logging.getLogger("dcpipe.extract")
DTYPES = {"float16": np.float16, "float32": np.float32}
TRIM_EVERY = 1  # batches between heap trims (a trim costs ~1% of a batch)


class StoreMismatch(DcpipeError):
    """An existing store was made from other shards, another model or other options."""


def extract(shards, store_path, model: ModelSpec = ModelSpec(),
            settings: ExtractSettings = ExtractSettings(), *, model_path=None, seed: int = 0,
            progress: bool = True) -> dict:
    """Fill (or finish) the feature store at `store_path` for `shards` (list of ShardInfo).

    With `model_path` the network (and its ModelSpec) comes from the checkpoint; without, it is
    the random init of `model` for the workspace `seed`. `settings.chunk_rows` is an upper
    bound: it is lowered to the largest shard's count, so that collections of small shards (the
    shard stage's default is 1,000) carry no padding. Under torchrun, rank and world come from
    the environment. Returns a summary of this process's share of the work and whether the store
    is complete.
    """
    started = time.monotonic()
    group = ProcessGroup.start()
    device = group.device
    net, model_info = _model(model_path, model, seed)
    net.to(device, memory_format=torch.channels_last).eval()
    precision = autocast_dtype(settings.precision, device)
    model_info["precision"] = "bf16" if precision else "fp32"  # the features depend on it
    store = _prepare_store(group, shards, Path(store_path), model_info, settings.dtype,
                           settings.chunk_rows)
    mine = [s for s in range(len(shards)) if s % group.world == group.rank]
    todo = [s for s in mine if not store.is_done(s)]
    bar = tqdm(total=sum(shards[s].n_samples for s in todo), unit="img", smoothing=0.1,
               desc=f"extract rank {group.rank}", disable=not progress or group.rank != 0)
    with bar:
        counts = _extract_shards(net, store, shards, todo, device, bar, precision,
                                 batch_size=settings.batch_size, workers=settings.workers,
                                 input_size=net.config["input_size"])
    complete = _finish(group, store)
    seconds = time.monotonic() - started
    return {"store": str(store_path), "rows": store.n_rows, "dim": store.dim,
            "shards": len(shards), "shards_skipped": len(mine) - len(todo), **counts,
            "seconds": round(seconds, 3), "images_per_s": round(counts["samples"] / seconds, 1),
            "complete": complete, "rank": group.rank, "world_size": group.world}


# ---------------------------------------------------------------- set-up
def _model(model_path, spec: ModelSpec, seed: int):
    """The round's model and the facts about it that the store records."""
    if model_path is None:
        model = random_init(spec, seed)
        return model, {**model.config, "source": "random-init", "seed": seed}
    model, meta = load_model(model_path)
    digest = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
    return model, {**model.config, "source": str(model_path), "sha256": digest,
                   "round": meta.get("round")}


def _prepare_store(group, shards, path: Path, model_info, dtype, chunk_rows) -> FeatureStore:
    counts = [int(info.n_samples) for info in shards]
    chunk_rows = max(1, min(chunk_rows, max(counts, default=1)))  # small shards: no padding
    dim = model_info["feature_dim"]
    attrs = {"shard_names": [info.name for info in shards],
             "class_names": sorted({c for info in shards for c in info.classes}),
             "model": model_info}
    if group.rank == 0:  # alone: the others wait at the barrier
        if not (path / "zarr.json").exists():
            create_store(path, counts=counts, dim=dim, dtype=dtype, chunk_rows=chunk_rows,
                         attrs=attrs)
        open_store(path, mode="r+").remove_debris()
    group.barrier()
    store = open_store(path, mode="r+")
    expected = {**attrs, "format": FORMAT, "dim": dim, "dtype": dtype, "chunk_rows": chunk_rows}
    differ = sorted(k for k, v in expected.items() if _identity_of(k, store.attrs.get(k))
                    != _identity_of(k, v))
    if store.shard_count.tolist() != counts:
        differ.append("shard_count")
    if differ:
        raise StoreMismatch(f"{path} was made with other {', '.join(differ)}; "
                            "delete it to extract again")
    return store


def _identity_of(key: str, value):
    """What must match for a store to be resumed: a model by its contents, not its path."""
    if key == "model" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "source"}
    return value


def _finish(group, store: FeatureStore) -> bool:
    group.barrier()
    if group.rank == 0 and not store.missing_shards():
        store.set_complete()
    group.barrier()
    return not store.missing_shards()


# ---------------------------------------------------------------- the work
def _identity(item):
    return item


def _extract_shards(model, store: FeatureStore, shards, todo, device, bar, precision, *,
                    batch_size, workers, input_size) -> dict:
    counts = {"shards_done": 0, "samples": 0, "failed": 0}
    labels = {name: i for i, name in enumerate(store.attrs["class_names"])}
    jobs = [ShardJob(s, str(shards[s].path), int(shards[s].n_samples), shards[s].sha256,
                     shards[s].label_field) for s in todo]
    for job in jobs:
        if job.count == 0:  # an empty shard has nothing to stream
            _commit(_ShardBlock(store, job.position, shards[job.position].name), counts)
    blocks = {}  # shards being streamed (a few at a time: the loader goes shard by shard)
    loader = DataLoader(ShardBatches([j for j in jobs if j.count], batch_size, input_size, labels),
                        batch_size=None, num_workers=workers, collate_fn=_identity,
                        pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None)
    out_dtype = DTYPES[store.attrs["dtype"]]
    for i, batch in enumerate(raised(loader)):
        if i % TRIM_EVERY == 0:
            _trim_heap()
        s = batch["shard"]
        if s not in blocks:
            blocks[s] = _ShardBlock(store, s, shards[s].name)
        block = blocks[s]
        block.add(batch, _embed(model, batch["images"], device, out_dtype, precision))
        bar.update(len(batch["rows"]))
        counts["samples"] += len(batch["rows"])
        if block.remaining == 0:
            _commit(blocks.pop(s), counts)
            bar.set_postfix(failed=counts["failed"], refresh=False)
    if blocks:
        raise RuntimeError(f"shards {sorted(blocks)} were not fully streamed")
    return counts


def _load_malloc_trim():
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


_MALLOC_TRIM = _load_malloc_trim()


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc). Activations of alternating batch shapes
    otherwise leave a fragmented heap that glibc keeps, and peak RSS creeps up with the run's
    length (measured: +200 MB between 10k and 100k images; flat with this)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _embed(model, images: torch.Tensor, device, out_dtype, precision) -> np.ndarray:
    if not len(images):
        return np.empty((0, model.feature_dim), dtype=out_dtype)
    with torch.inference_mode(), autocast(device, precision):
        batch = normalize_batch(images.to(device, non_blocking=True))
        features = model.embed(batch.contiguous(memory_format=torch.channels_last))
    return features.float().cpu().numpy().astype(out_dtype)


def _commit(block: "_ShardBlock", counts: dict) -> None:
    record = block.commit()
    counts["shards_done"] += 1
    counts["failed"] += len(record["failed"])
    if record["failed"]:
        first = record["failed"][0]
        log.warning("shard %s: %d of %d samples have no feature (first: row %d, %s)",
                    record["name"], len(record["failed"]), record["n_samples"], first["row"],
                    first["reason"])


@dataclass
class _Chunk:
    """One store chunk being filled: every per-row array, padding values where unfilled."""
    arrays: dict
    filled: int = 0


class _ShardBlock:
    """One shard's rows on their way into the store: a buffer per chunk, written once full."""

    def __init__(self, store: FeatureStore, s: int, name: str):
        self.store, self.s, self.name = store, s, name
        self.start, stop = store.shard_rows(s)
        self.count = self.remaining = stop - self.start
        self.keys = [None] * self.count
        self.failures, self.warnings = [], []
        self.chunks: dict[int, _Chunk] = {}  # by chunk number within the shard

    def _chunk(self, j: int) -> "_Chunk":
        if j not in self.chunks:
            n, dim = self.store.chunk_rows, self.store.dim
            arrays = {name: np.full(n, fill, dtype=kind) for name, (kind, fill) in ROW_ARRAYS.items()}
            arrays["features"] = np.zeros((n, dim), dtype=self.store.attrs["dtype"])
            self.chunks[j] = _Chunk(arrays)
        return self.chunks[j]

    def add(self, batch: dict, features: np.ndarray) -> None:
        rows, ok = batch["rows"], batch["ok"]
        for row, key in zip(rows.tolist(), batch["keys"]):
            self.keys[row] = key
        self.failures += batch["failures"]
        self.warnings += batch["warnings"]
        full = np.zeros((len(rows), self.store.dim), dtype=features.dtype)
        full[ok] = features
        size = self.store.chunk_rows
        for j in np.unique(rows // size).tolist():
            sel = rows // size == j
            local = rows[sel] - j * size
            chunk = self._chunk(j)
            arrays = chunk.arrays
            arrays["features"][local] = full[sel]
            arrays["valid"][local] = ok[sel]
            arrays["shard"][local] = self.s
            arrays["row"][local] = rows[sel]
            arrays["true_label"][local] = batch["labels"][sel]
            chunk.filled += int(sel.sum())
            if chunk.filled == min(size, self.count - j * size):  # the shard's rows in it
                self.store.write_rows(self.start + j * size, arrays)
                del self.chunks[j]
        self.remaining -= len(rows)

    def commit(self) -> dict:
        record = {"shard": self.s, "name": self.name, "n_samples": self.count,
                  "n_valid": self.count - len(self.failures),
                  "failed": sorted(self.failures, key=lambda f: f["row"]),
                  "warnings": sorted(self.warnings, key=lambda w: w["row"])}
        self.store.commit_shard(self.s, self.keys, record)
        return record
