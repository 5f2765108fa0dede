import numpy as np

from dcpipe.stages.cluster.rowsample import RowSample


def test_sample_has_the_asked_size_of_valid_rows_whatever_the_block_size():
    valid = (np.random.default_rng(0).random(1000) > 0.3).astype(np.uint8)
    sample = RowSample(valid, chunk_rows=16, size=200, seed=4)
    rows = np.concatenate([sample.rows_in(s, s + 64) for s in range(0, 1000, 64)])
    assert sample.size == len(rows) == len(np.unique(rows)) == 200
    assert valid[rows].all() and np.array_equal(rows, np.sort(rows))
    assert np.array_equal(rows, sample.rows_in(0, 1000))
    assert np.array_equal(rows, RowSample(valid, 16, 200, seed=4).rows_in(0, 1000))
    assert not np.array_equal(rows, RowSample(valid, 16, 200, seed=5).rows_in(0, 1000))
    by_chunk = np.concatenate([r for r, _ in sample.by_chunk()])
    assert np.array_equal(by_chunk, rows)
    assert sample.position(64) == int((rows < 64).sum())


def test_large_sample_is_every_valid_row():
    valid = np.array([1, 0, 1, 1, 0, 1, 1], dtype=np.uint8)
    sample = RowSample(valid, chunk_rows=3, size=100, seed=0)
    assert sample.everything and sample.rows_in(0, 7).tolist() == [0, 2, 3, 5, 6]
    assert sample.wanted_blocks(3).tolist() == [True, True, True]


def test_sample_is_uniform_over_chunks():
    valid = np.ones(4000, dtype=np.uint8)
    valid[:2000:2] = 0     # the first half holds half as many valid rows
    hits = np.zeros(2, dtype=np.int64)
    for seed in range(200):
        rows = RowSample(valid, 100, 30, seed).rows_in(0, 4000)
        hits += np.bincount(rows // 2000, minlength=2)
    assert abs(hits[0] / hits.sum() - 1 / 3) < 0.02
