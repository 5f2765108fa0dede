"""The feature store of a round (`rounds/RRRR/features.zarr`, zarr v3): layout, commits, reading.

    features      float16|float32 (R, D), chunks (chunk_rows, D)   penultimate features
    valid         uint8   (R,)  1 = row holds a feature; 0 = padding or failed sample
    shard, row    int32   (R,)  shard position in the round's list, row in its tar (-1 padding)
    true_label    int32   (R,)  index into attrs["class_names"] of the sample's meta label, -1
                                unknown (evaluation only, never for training)
    shard_offset  int64   (S,)  first row of shard s, a multiple of chunk_rows
    shard_count   int64   (S,)  samples of shard s
    keys/NNNNNN.json            keys of shard s in row order (null where the tar broke off)
    done/NNNNNN.json            shard s committed; lists its failed rows with reasons

Every per-row array is chunked by chunk_rows, and each shard's block starts on a chunk boundary,
so writers of different shards never touch the same chunk file. NNNNNN is the shard's position
in the round's shard list (attrs["shard_names"] gives the tar names). The layout (all arrays,
offsets, attributes) is built in a temporary folder and renamed into place, so a store exists
only with its full layout; the group attribute `complete` becomes true when every shard is done.

Verified reading (format 2): every chunk carries a crc32c checksum (zarr v3's `crc32c` codec,
after zstd) and every chunk of a committed shard is stored, all-fill ones included
(write_empty_chunks), so a flipped byte or a missing chunk file is a StoreCorrupt naming the
store, array and rows, never a silent fill value. Stores of format 1 (written before checksums)
still read as they did, unverified: their all-fill chunks were legitimately not stored.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from dcpipe.errors import FileFormatError
from dcpipe.shards.atomic import atomic_write_bytes, atomic_write_json, fsync_dir, read_json

FORMAT = "dcpipe.features/2"
UNCHECKED_FORMAT = "dcpipe.features/1"  # no checksums, all-fill chunks not stored
COMPRESSORS = (ZstdCodec(level=0), Crc32cCodec())  # zarr's default zstd, then a checksum
WRITE_ALL_CHUNKS = {"write_empty_chunks": True}  # a missing chunk file is then always damage
# per-row arrays besides `features`: dtype and fill value (what padding rows hold)
ROW_ARRAYS = {"valid": ("uint8", 0), "shard": ("int32", -1), "row": ("int32", -1),
              "true_label": ("int32", -1)}


def plan_offsets(counts, chunk_rows: int) -> tuple[np.ndarray, int]:
    """First row of each shard (each block padded up to whole chunks) and the total row count."""
    counts = np.asarray(counts, dtype=np.int64)
    blocks = -(-counts // chunk_rows) * chunk_rows
    offsets = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64)
    return offsets[: len(counts)], int(blocks.sum())


def shard_file(s: int) -> str:
    return f"{s:06d}.json"


class StoreCorrupt(FileFormatError):
    """A feature store chunk that is missing or fails its checksum."""


class _ChunkCheckedStore(LocalStore):
    """A local zarr store in which a missing chunk is an error, not the fill value."""

    async def get(self, key, prototype=None, byte_range=None):
        found = await super().get(key, prototype, byte_range)
        if found is None and "/c/" in key:
            raise StoreCorrupt(f"{Path(str(self.root)) / key} is missing: the feature store is "
                               "damaged; delete it to extract the round again")
        return found


def create_store(path, *, counts, dim: int, dtype: str, chunk_rows: int, attrs: dict) -> None:
    """Write the whole layout under a temporary name, then rename it to `path` (atomic)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # debris of a run killed while creating the layout
    offsets, n_rows = plan_offsets(counts, chunk_rows)
    layout = {"format": FORMAT, "complete": False, "n_rows": n_rows, "dim": dim,
              "dtype": dtype, "chunk_rows": chunk_rows}
    group = zarr.open_group(tmp, mode="w", zarr_format=3, attributes={**attrs, **layout})
    checked = {"compressors": COMPRESSORS, "config": WRITE_ALL_CHUNKS}
    group.create_array("features", shape=(n_rows, dim), chunks=(chunk_rows, dim), dtype=dtype,
                       fill_value=0, **checked)
    for name, (kind, fill) in ROW_ARRAYS.items():
        group.create_array(name, shape=(n_rows,), chunks=(chunk_rows,), dtype=kind,
                           fill_value=fill, **checked)
    n_shards = max(len(offsets), 1)  # zarr wants chunks >= 1 even for an empty shard list
    for name, values in (("shard_offset", offsets), ("shard_count", np.asarray(counts))):
        group.create_array(name, shape=(len(offsets),), chunks=(n_shards,), dtype="int64",
                           fill_value=0, **checked)[:] = values
    (tmp / "keys").mkdir()
    (tmp / "done").mkdir()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(path)
    fsync_dir(path.parent)


class FeatureStore:
    """A store opened for reading (any process) or for committing shards (the extract stage)."""

    def __init__(self, path, mode: str = "r"):
        self.path = Path(path)
        meta = read_json(self.path / "zarr.json")
        if meta is None:
            raise FileNotFoundError(f"no feature store at {self.path}")
        store_format = meta.get("attributes", {}).get("format")
        if store_format not in (FORMAT, UNCHECKED_FORMAT):
            raise ValueError(f"{self.path} is not a dcpipe feature store")
        self.checked = store_format == FORMAT
        where = _ChunkCheckedStore(self.path, read_only=mode == "r") if self.checked else self.path
        self.group = zarr.open_group(where, mode=mode, zarr_format=3)
        self.attrs = dict(self.group.attrs)
        self.n_rows = self.attrs["n_rows"]
        self.dim = self.attrs["dim"]
        self.chunk_rows = self.attrs["chunk_rows"]
        self.shard_offset = self.read("shard_offset")
        self.shard_count = self.read("shard_count")

    @property
    def n_shards(self) -> int:
        return len(self.shard_count)

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    def shard_rows(self, s: int) -> tuple[int, int]:
        start = int(self.shard_offset[s])
        return start, start + int(self.shard_count[s])

    # -------------------------------------------------------------- per-shard records
    def is_done(self, s: int) -> bool:
        return (self.path / "done" / shard_file(s)).exists()

    def done_record(self, s: int) -> dict | None:
        return read_json(self.path / "done" / shard_file(s))

    def keys(self, s: int) -> list[str | None]:
        return read_json(self.path / "keys" / shard_file(s))

    def missing_shards(self) -> list[int]:
        return [s for s in range(self.n_shards) if not self.is_done(s)]

    # -------------------------------------------------------------- reading
    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of array `name`; a chunk that fails its checksum is StoreCorrupt."""
        try:
            return np.asarray(self.group[name][start:stop])
        except StoreCorrupt:
            raise
        except (ValueError, RuntimeError) as exc:  # the crc32c codec, or zstd on damaged bytes
            raise StoreCorrupt(f"{self.path}/{name} rows {start}:{stop}: {exc}: the feature "
                               "store is damaged; delete it to extract the round again") from exc

    def iter_chunks(self, start: int = 0, stop: int | None = None
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(row_start, float32 features, bool valid mask) for each chunk in [start, stop)."""
        stop = self.n_rows if stop is None else stop
        step = self.chunk_rows
        for lo in range(start - start % step, stop, step):
            lo, hi = max(lo, start), min(lo + step, stop)
            valid = self.read("valid", lo, hi).astype(bool)
            yield lo, self.read("features", lo, hi).astype(np.float32), valid

    # -------------------------------------------------------------- writing (extract stage)
    def write_rows(self, start: int, columns: dict[str, np.ndarray]) -> None:
        """Whole chunks, stored even when they hold only fill values (see the module doc)."""
        for name, values in columns.items():
            self.group[name].with_config(WRITE_ALL_CHUNKS)[start:start + len(values)] = values

    def commit_shard(self, s: int, keys: list, record: dict) -> None:
        """Chunks made durable, then keys, then the done marker: the marker makes it count."""
        start, stop = self.shard_rows(s)
        for first in range(start, stop, self.chunk_rows):
            self._fsync_chunk(first // self.chunk_rows)
        atomic_write_json(self.path / "keys" / shard_file(s), keys)
        atomic_write_json(self.path / "done" / shard_file(s), record)

    def _fsync_chunk(self, i: int) -> None:
        """zarr renames chunk files into place but does not fsync them (zarr v3 key c/i[/0])."""
        for name in ("features", *ROW_ARRAYS):
            path = self.path / name / "c" / str(i)
            path = path / "0" if name == "features" else path
            if path.exists():  # an all-fill chunk is not stored
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
                fsync_dir(path.parent)

    def remove_debris(self) -> None:
        """Temp files of a killed run: zarr's `*.partial` chunks, our `.*.tmp` JSON files."""
        for path in self.path.rglob("*"):
            name = path.name
            if path.is_file() and (name.endswith(".partial") or
                                   (name.startswith(".") and name.endswith(".tmp"))):
                path.unlink()

    def set_complete(self) -> None:
        """Rewrite the group's zarr.json atomically (zarr's own update is not crash-safe)."""
        meta_path = self.path / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["attributes"]["complete"] = True
        atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
        self.attrs["complete"] = True


def verify_store(path) -> list[str]:
    """What is damaged in the committed shards of the store at `path` (every chunk is read)."""
    store = open_store(path)
    problems = []
    for s in range(store.n_shards):
        if not store.is_done(s):
            continue
        if store.keys(s) is None:
            problems.append(f"{store.path}/keys/{shard_file(s)} is missing")
        start, stop = store.shard_rows(s)
        for lo in range(start, stop, store.chunk_rows):
            for name in ("features", *ROW_ARRAYS):
                try:
                    store.read(name, lo, lo + store.chunk_rows)
                except StoreCorrupt as exc:
                    problems.append(str(exc))
    return problems


def open_store(path, mode: str = "r") -> FeatureStore:
    """Open a store: mode "r" to read (clustering), "r+" to commit shards (extract)."""
    return FeatureStore(path, mode)

