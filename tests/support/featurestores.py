"""Feature stores in the layout of ARCHITECTURE.md ("Feature store"), written directly with zarr.

Tests and the cluster benchmark use these so they do not depend on the extract stage: the same
arrays and group attributes as stages/featurestore.py writes (format, n_rows, dim, chunk_rows,
shard_names, complete), keys in `keys/<shard position>.json`. Each shard's block starts on a
chunk boundary and the store ends on one; the rows in between are padding (valid 0, shard -1,
row -1).
"""

import json
from pathlib import Path

import numpy as np
import zarr


def shard_layout(shard_counts, chunk_rows: int) -> tuple[np.ndarray, int]:
    """(first store row of each shard, total rows) with every shard starting on a chunk."""
    counts = np.asarray(shard_counts, dtype=np.int64)
    blocks = -(-counts // chunk_rows) * chunk_rows
    offsets = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64)
    return offsets, int(blocks.sum())


def create_store(path, dim: int, shard_counts, chunk_rows: int, dtype="float16", class_names=None,
                 shard_names=None):
    """An empty store ready for write_rows; returns the zarr group."""
    offsets, n_rows = shard_layout(shard_counts, chunk_rows)
    names = shard_names or [f"{s:06d}" for s in range(len(offsets))]
    g = zarr.open_group(Path(path), mode="w", zarr_format=3)
    g.create_array("features", shape=(n_rows, dim), dtype=dtype, chunks=(chunk_rows, dim))
    g.create_array("valid", shape=(n_rows,), dtype="uint8", chunks=(chunk_rows,), fill_value=0)
    g.create_array("true_label", shape=(n_rows,), dtype="int32", chunks=(chunk_rows,), fill_value=-1)
    shard, row = np.full(n_rows, -1, np.int32), np.full(n_rows, -1, np.int32)
    g.create_array("shard_offset", data=offsets)
    g.create_array("shard_count", data=np.asarray(shard_counts, dtype=np.int64))
    (Path(path) / "keys").mkdir()
    for s, (name, count) in enumerate(zip(names, shard_counts)):
        keys = [f"{name}{r:06d}" for r in range(count)]
        (Path(path) / "keys" / f"{s:06d}.json").write_text(json.dumps(keys))
        shard[offsets[s]:offsets[s] + count] = s
        row[offsets[s]:offsets[s] + count] = np.arange(count)
    g.create_array("shard", data=shard, chunks=(chunk_rows,))
    g.create_array("row", data=row, chunks=(chunk_rows,))
    g.attrs.update({"format": "dcpipe.features/1", "n_rows": n_rows, "dim": dim, "dtype": dtype,
                    "chunk_rows": chunk_rows, "shard_names": names,
                    "class_names": list(class_names or []), "complete": False})
    return g


def write_rows(g, sample_index: np.ndarray, features: np.ndarray, valid=None, true_labels=None) -> None:
    """Write samples (global sample numbers, shard after shard in tar order) into their rows."""
    rows = store_rows(g, sample_index)
    order = np.argsort(rows)
    rows = rows[order]
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    put = {"features": features, "valid": np.ones(len(rows), np.uint8) if valid is None else valid,
           "true_label": true_labels}
    for name, values in put.items():
        if values is None:
            continue
        block = np.asarray(g[name][lo:hi])
        block[rows - lo] = np.asarray(values)[order]
        g[name][lo:hi] = block


def store_rows(g, sample_index: np.ndarray) -> np.ndarray:
    """Store row of each global sample number."""
    counts = np.asarray(g["shard_count"][:])
    offsets = np.asarray(g["shard_offset"][:])
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    s = np.searchsorted(firsts, sample_index, side="right") - 1
    return offsets[s] + (sample_index - firsts[s])


def make_store(path, features, shard_counts, chunk_rows: int, true_labels=None, valid=None,
               dtype="float16", class_names=None, shard_names=None) -> Path:
    """A complete store holding `features` (N, D), N = sum(shard_counts), in sample order."""
    features = np.asarray(features)
    if len(features) != sum(shard_counts):
        raise ValueError(f"{len(features)} feature rows for {sum(shard_counts)} samples")
    if class_names is None and true_labels is not None:
        class_names = [f"class{c}" for c in range(int(np.max(true_labels)) + 1)]
    g = create_store(path, features.shape[1], shard_counts, chunk_rows, dtype, class_names, shard_names)
    write_rows(g, np.arange(len(features)), features, valid, true_labels)
    g.attrs["complete"] = True
    return Path(path)


def blobs(n: int, dim: int, n_blobs: int, seed: int = 0, spread: float = 1.0, scale: float = 5.0):
    """(features (n, dim) float32, blob of each row): isotropic Gaussian blobs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, dim)) * scale
    blob = rng.integers(0, n_blobs, n)
    return (centres[blob] + spread * rng.standard_normal((n, dim))).astype(np.float32), blob
