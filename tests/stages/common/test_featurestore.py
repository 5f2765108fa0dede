"""The feature store verifies what it reads: chunk checksums, and a missing chunk is an error."""
import numpy as np
import pytest

from dcpipe.stages.common.featurereader import block_rows, iter_blocks, open_complete, read_valid
from dcpipe.stages.common.featurestore import (ROW_ARRAYS, StoreCorrupt, create_store, open_store,
                                               verify_store)
from support.damage import first_chunk, flip_byte
from support.featurestores import make_store

CHUNK, DIM = 4, 3


def _checked_store(path, counts=(5, 4)):
    """A complete store written as the extract stage writes it; shard 1's rows all failed."""
    create_store(path, counts=counts, dim=DIM, dtype="float16", chunk_rows=CHUNK,
                 attrs={"shard_names": [f"{s:06d}" for s in range(len(counts))]})
    store = open_store(path, "r+")
    rng = np.random.default_rng(0)
    for s, n in enumerate(counts):
        start, _ = store.shard_rows(s)
        for lo in range(0, n, CHUNK):
            arrays = {name: np.full(CHUNK, fill, kind) for name, (kind, fill) in ROW_ARRAYS.items()}
            rows = np.arange(lo, min(lo + CHUNK, n))
            arrays["valid"][: len(rows)] = s == 0
            arrays["shard"][: len(rows)], arrays["row"][: len(rows)] = s, rows
            arrays["features"] = (rng.standard_normal((CHUNK, DIM)) * (s == 0)).astype("float16")
            store.write_rows(start + lo, arrays)
        store.commit_shard(s, [f"k{s}{r}" for r in range(n)], {"failed": []})
    store.set_complete()
    return path


def _read_everything(path):
    store = open_complete(path)
    return read_valid(store), [b for _, b in iter_blocks(store, block_rows(store, CHUNK))]


def test_a_checked_store_reads_back_and_stores_even_all_fill_chunks(tmp_path):
    path = _checked_store(tmp_path / "f.zarr")
    valid, blocks = _read_everything(path)
    assert valid.tolist() == [1] * 5 + [0] * 3 + [0] * 4 and len(blocks) == 3
    assert (path / "valid" / "c" / "2").exists()  # shard 1: every row failed, all zeros
    assert open_store(path).checked and verify_store(path) == []


def test_a_flipped_byte_in_a_chunk_is_an_error_naming_the_array(tmp_path):
    path = _checked_store(tmp_path / "f.zarr")
    chunk = first_chunk(path, "features")
    flip_byte(chunk, chunk.stat().st_size // 2)
    with pytest.raises(StoreCorrupt, match="f.zarr/features rows 0:4.*checksum"):
        _read_everything(path)
    [problem] = verify_store(path)
    assert "features" in problem


@pytest.mark.parametrize("array", ["features", "valid"])
def test_a_deleted_chunk_is_an_error_not_fill_values(tmp_path, array):
    path = _checked_store(tmp_path / "f.zarr")
    first_chunk(path, array).unlink()
    with pytest.raises(StoreCorrupt, match=f"{array}/c/0.* is missing"):
        _read_everything(path)
    [problem] = verify_store(path)
    assert f"{array}/c/0" in problem


def test_a_store_written_before_checksums_still_reads_unverified(tmp_path):
    path = make_store(tmp_path / "old.zarr", np.ones((6, DIM)), [4, 2], CHUNK)
    valid, blocks = _read_everything(path)
    assert valid.sum() == 6 and not open_store(path).checked

