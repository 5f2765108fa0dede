import numpy as np
import pytest

from dcpipe.stages.common import metrics


def test_identical_labellings_score_one():
    a = np.array([0, 0, 1, 1, 2, 2, 2])
    assert metrics.nmi(a, a) == pytest.approx(1.0)
    assert metrics.ari(a, a) == pytest.approx(1.0)
    assert metrics.cluster_accuracy(a, a) == 1.0


def test_renamed_clusters_score_one():
    true = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    pred = np.array([7, 7, 4, 4, 0, 0, 0, 5])
    assert metrics.compare(pred, true) == pytest.approx({"nmi": 1.0, "ari": 1.0, "acc": 1.0, "n": 8})


def test_known_values_by_hand():
    # b refines a: MI = H(a) = ln 2, H(b) = 1.5 ln 2 -> NMI = ln2 / (2.5 ln2 / 2) = 0.8
    a = np.array([0, 0, 1, 1])
    b = np.array([0, 0, 1, 2])
    assert metrics.nmi(a, b) == pytest.approx(0.8)
    # a cluster of b can match only one class of a: 2 + 1 of 4 samples
    assert metrics.cluster_accuracy(b, a) == pytest.approx(0.75)
    # crossed halves: no information, and worse than chance for ARI (a textbook value)
    c = np.array([0, 1, 0, 1])
    assert metrics.nmi(a, c) == pytest.approx(0.0, abs=1e-12)
    assert metrics.ari(a, c) == pytest.approx(-0.5)
    assert metrics.cluster_accuracy(c, a) == pytest.approx(0.5)


def test_independent_labellings_score_near_zero():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 20000), rng.integers(0, 5, 20000)
    assert metrics.nmi(a, b) < 0.002
    assert abs(metrics.ari(a, b)) < 0.002
    assert metrics.cluster_accuracy(a, b) < 0.22  # chance is 1/5 plus the matching's pick


def test_unknown_labels_are_left_out():
    true = np.array([0, 0, 1, 1, -1, -1, 2])
    pred = np.array([3, 3, 5, 5, 3, 5, -1])  # the -1 pairs would break the perfect match
    scores = metrics.compare(pred, true)
    assert scores == pytest.approx({"nmi": 1.0, "ari": 1.0, "acc": 1.0, "n": 4})


def test_over_clustering_accuracy_counts_one_cluster_per_class():
    true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 3])  # 4 clusters for 2 classes
    assert metrics.cluster_accuracy(pred, true) == pytest.approx(5 / 8)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same length"):
        metrics.nmi([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no sample"):
        metrics.ari([-1, 0], [1, -1])


def test_scores_equal_scikit_learns_on_random_labellings():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(1)
    for n, k, c in ((50, 7, 3), (5000, 40, 10), (20000, 300, 5)):
        pred, true = rng.integers(0, k, n), rng.integers(0, c, n)
        related = rng.random(n) < 0.5  # half the samples agree: scores well away from 0 and 1
        true[related] = pred[related] % c
        assert metrics.nmi(pred, true) == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-12)
        assert metrics.ari(pred, true) == pytest.approx(adjusted_rand_score(true, pred), abs=1e-12)


def test_counts_added_block_by_block_equal_one_pass(monkeypatch):
    # merged many times (a tiny merge threshold, blocks of 1,000): the same counts as in one go
    rng = np.random.default_rng(2)
    pred, true = rng.integers(-1, 50, 30000), rng.integers(-1, 8, 30000)
    whole = metrics.compare(pred, true)
    monkeypatch.setattr(metrics, "BLOCK", 1000)
    monkeypatch.setattr(metrics.PairCounts, "MERGE_AT", 2500)
    assert metrics.compare(pred, true) == whole
    assert whole["n"] == int(((pred >= 0) & (true >= 0)).sum())
