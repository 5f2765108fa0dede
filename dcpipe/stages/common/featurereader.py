"""Reading a complete feature store (stages/featurestore.py) block by block, for clustering.

Nothing here holds the features of the whole store: blocks of whole store chunks are read one
at a time (the next one is read in a background thread while the caller works on the current
one). Per-row arrays of one or four bytes (`valid`, `true_label`) are read whole: the brief
allows those to grow with N.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from dcpipe.errors import FileFormatError

from dcpipe.shards.naming import is_valid_key

from dcpipe.stages.common.featurestore import FeatureStore, open_store

# Rows per read block when the caller does not say: about this many bytes of features.
BLOCK_BYTES = 8 << 20


class StoreError(FileFormatError):
    """The feature store is missing, incomplete or inconsistent."""


def open_complete(path) -> FeatureStore:
    """Open a store for reading, refusing one whose extraction has not finished."""
    try:
        store = open_store(path)
    except FileNotFoundError as e:
        raise StoreError(str(e)) from e
    if not store.complete:
        raise StoreError(f"feature store {path} is incomplete (extraction has not finished)")
    names = shard_names(store)
    bad = [n for n in names if not is_valid_key(n)]
    if bad or len(names) != store.n_shards:
        raise StoreError(f"{path}: shard_names do not match the shards ({bad[:3] or len(names)})")
    return store


def shard_names(store: FeatureStore) -> list[str]:
    return list(store.attrs.get("shard_names", []))


def read_valid(store: FeatureStore) -> np.ndarray:
    """uint8 (R,): 1 where the row holds a feature."""
    return np.asarray(store.group["valid"][:], dtype=np.uint8)


def read_true_labels(store: FeatureStore) -> np.ndarray | None:
    """int32 (R,) class index per row (-1 unknown), or None when the store has none."""
    try:  # (not via array_keys(): listing the group trips over the keys/ folder)
        array = store.group["true_label"]
    except KeyError:
        return None
    return np.asarray(array[:], dtype=np.int32)


def read_keys(store: FeatureStore, s: int) -> list:
    """Shard s's keys in tar order (None where the tar broke off)."""
    keys = store.keys(s)
    if keys is None or len(keys) != store.shard_count[s]:
        raise StoreError(f"{store.path}: keys of shard {s} missing or not {store.shard_count[s]} long")
    return keys


def block_rows(store: FeatureStore, rows: int | None) -> int:
    """Rows per read block: a whole number of store chunks (at least one)."""
    if rows is None:
        rows = BLOCK_BYTES // (store.dim * store.group["features"].dtype.itemsize)
    return max(1, round(rows / store.chunk_rows)) * store.chunk_rows


def iter_blocks(store: FeatureStore, block: int, wanted=None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first row, features) for consecutive blocks of `block` rows, in row order.

    `wanted`, a boolean per block, skips blocks the caller does not need. The next block is
    read while the caller handles the current one (zarr decompresses outside the GIL).
    """
    features = store.group["features"]
    starts = range(0, store.n_rows, block)
    if wanted is not None:
        starts = [s for s, w in zip(starts, wanted) if w]

    def read(start):
        return np.asarray(features[start:start + block])

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for start in starts:
            ahead = pool.submit(read, start)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (start, ahead)
        if pending is not None:
            yield pending[0], pending[1].result()
