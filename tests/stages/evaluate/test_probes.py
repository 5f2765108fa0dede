"""Linear probe, k-NN and k-means quality on tiny cases with known answers."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from dcpipe.stages.evaluate import probes

torch.set_num_threads(1)


def separable(n_per_class=30, classes=4, dim=16, seed=0):
    """Each class a tight blob around its own corner of a cube: linearly separable."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    centres = rng.normal(size=(classes, dim)) * 5
    x = centres[y] + rng.normal(scale=0.1, size=(len(y), dim))
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order]


def fit_streamed(x, y, batch, **fit_args):
    probe = probes.RidgeProbe(x.shape[1])
    for start in range(0, len(x), batch):
        probe.add(x[start:start + batch], y[start:start + batch])
    return probe.fit(**fit_args)


def test_linear_probe_separates_separable_classes():
    x, y = separable()
    xt, yt = separable(seed=0)
    probe = fit_streamed(x, y, batch=7)
    assert probes.accuracy(probe.predict(xt), yt) == 1.0


def test_linear_probe_takes_classes_as_they_appear_in_a_class_ordered_stream():
    x, y = separable()
    order = np.argsort(y, kind="stable")  # a folder is read class by class
    probe = fit_streamed(x[order], y[order], batch=16)
    assert probe.weight.shape == (16, 4)
    assert probes.accuracy(probe.predict(x), y) == 1.0


def test_linear_probe_equals_ridge_on_standardised_features():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(80, 6)) * [1, 2, 3, 4, 5, 6] + 10).astype(np.float32)
    y = rng.integers(0, 3, size=80)
    lam = 0.3
    probe = fit_streamed(x, y, batch=9, lambdas=(lam,))
    z = StandardScaler().fit_transform(x.astype(np.float64))
    ridge = Ridge(alpha=lam * len(x)).fit(z, np.eye(3)[y])
    assert np.allclose(probe.scores(x), ridge.predict(z), atol=1e-4)


def explicit_gcv(x, y, lam):
    """GCV from the hat matrix, with the intercept: the definition, not the eigen shortcut."""
    n = len(x)
    z = StandardScaler().fit_transform(x.astype(np.float64))
    z1 = np.hstack([z, np.ones((n, 1))])
    penalty = np.diag([lam * n] * z.shape[1] + [0.0])
    hat = z1 @ np.linalg.solve(z1.T @ z1 + penalty, z1.T)
    targets = np.eye(int(y.max()) + 1)[y]
    rss = np.sum((targets - hat @ targets) ** 2) / n
    return rss / (1 - np.trace(hat) / n) ** 2


def test_gcv_picks_the_lambda_of_the_explicit_definition():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 12)).astype(np.float32)
    y = (x[:, 0] + rng.normal(scale=2.0, size=40) > 0).astype(int)
    lambdas = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    probe = fit_streamed(x, y, batch=40, lambdas=lambdas)
    assert probe.lam == min(lambdas, key=lambda lam: explicit_gcv(x, y, lam))


def test_knn_on_separable_features_is_perfect():
    x, y = separable()
    xt, yt = separable(seed=0)
    assert probes.accuracy(probes.KnnClassifier(x, y, k=5).predict(xt), yt) == 1.0


def test_knn_vote_is_weighted_by_similarity():
    train = np.array([[1.0, 0.0], [0.5, 0.866], [0.5, -0.866]])
    labels = np.array([0, 1, 1])  # one identical neighbour of class 0, two distant of class 1
    query = np.array([[1.0, 0.0]])
    assert probes.KnnClassifier(train, labels, k=3).predict(query)[0] == 0
    assert probes.KnnClassifier(train, labels, k=3, temperature=100).predict(query)[0] == 1


def test_kmeans_quality_on_separable_blobs_with_permuted_ids():
    x, y = separable(n_per_class=25, classes=3, dim=8)
    permuted = np.array([2, 0, 1])[y]  # cluster ids need not match class ids
    for pca_dim in (None, 2):  # plain, and PCA-whitened as the method does
        result = probes.kmeans_quality(x, permuted, k=3, seed=0, pca_dim=pca_dim)
        assert result["nmi"] == pytest.approx(1.0)
        assert result["ari"] == pytest.approx(1.0)
        assert result["acc"] == pytest.approx(1.0)


def test_kmeans_refuses_more_clusters_than_samples():
    x, y = separable(n_per_class=2, classes=2, dim=4)
    with pytest.raises(ValueError, match="k=5"):
        probes.kmeans_quality(x, y, k=5)


def test_kmeans_quality_averages_seeded_runs_and_can_normalise():
    x, y = separable(n_per_class=25, classes=3, dim=8)
    scaled = x * np.linspace(0.1, 10, len(x))[:, None]  # lengths differ, directions do not
    result = probes.kmeans_quality(scaled, y, k=3, seed=4, normalise=True, runs=4)
    assert result["runs"] == 4 and len(result["per_run"]) == 4 and result["normalised"]
    assert result["acc"] == pytest.approx(np.mean([r["acc"] for r in result["per_run"]]))
    assert result["acc_std"] == pytest.approx(np.std([r["acc"] for r in result["per_run"]]))
    assert result["nmi"] == pytest.approx(1.0)  # on the unit sphere the classes separate again
