import functools
import operator

import numpy as np
import pytest

from dcpipe.stages.common.whitening import CovarianceAccumulator, Moments, WhiteningPCA, fit_whitening


def test_streamed_statistics_equal_the_batch_ones_even_far_from_the_origin():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 6)) @ rng.standard_normal((6, 6)) + 1e4
    acc = CovarianceAccumulator(6)
    for start in range(0, 3000, 256):
        acc.add(x[start:start + 256].astype(np.float32))
    mean, cov = acc.mean_and_covariance()
    x32 = x.astype(np.float32).astype(np.float64)
    assert np.allclose(mean, x32.mean(axis=0), rtol=1e-12)
    assert np.allclose(cov, np.cov(x32.T, bias=True), rtol=1e-9, atol=1e-9)


def test_whitened_projection_has_identity_covariance_and_unit_rows(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 10)) * np.arange(1, 11)
    acc = CovarianceAccumulator(10)
    acc.add(x)
    pca = fit_whitening(acc, 4)
    raw = (x - pca.mean) @ pca.matrix.T.astype(np.float64)
    assert np.allclose(np.cov(raw.T, bias=True), np.eye(4), atol=1e-6)
    assert np.all(np.diff(pca.eigenvalues) <= 0)
    y = pca.apply(x)
    assert y.shape == (5000, 4) and y.dtype == np.float32
    assert np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    pca.save(tmp_path / "pca.npz")
    again = WhiteningPCA.load(tmp_path / "pca.npz")
    assert np.array_equal(again.apply(x), y)


def test_rank_deficient_features_do_not_blow_up():
    x = np.zeros((50, 5))
    x[:, 0] = np.arange(50)
    acc = CovarianceAccumulator(5)
    acc.add(x)
    y = fit_whitening(acc, 5).apply(x)
    assert np.isfinite(y).all()
    with pytest.raises(ValueError, match="at least one row"):
        CovarianceAccumulator(3).mean_and_covariance()


def test_block_moments_merged_in_any_bracketing_equal_the_batch_statistics_far_from_the_origin():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 6)) @ rng.standard_normal((6, 6)) + 1e4
    blocks = [Moments.of(x[start:start + 256].astype(np.float32)) for start in range(0, 3000, 256)]
    left_first = functools.reduce(operator.add, blocks)
    halves = functools.reduce(operator.add, blocks[:5]) + functools.reduce(operator.add, blocks[5:])
    x32 = x.astype(np.float32).astype(np.float64)
    for merged in (left_first, halves):
        mean, cov = merged.mean_and_covariance()
        assert merged.n == 3000 and np.allclose(mean, x32.mean(axis=0), rtol=1e-12)
        assert np.allclose(cov, np.cov(x32.T, bias=True), rtol=1e-9, atol=1e-9)
    assert Moments.of(x[:0]) is None
    pca = fit_whitening(halves, 3)
    assert np.allclose(np.linalg.norm(pca.apply(x), axis=1), 1, atol=1e-5)
