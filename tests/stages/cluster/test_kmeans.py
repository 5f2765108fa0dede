import numpy as np
import pytest

from dcpipe.stages.cluster import kmeans


def in_memory_dots(x: np.ndarray, block: int = 7):
    """dots(rows, vectors, which) over an array read in blocks of `block` rows, counting the
    blocks it reads."""
    reads = []

    def dots(rows, vectors, which):
        out = np.zeros(len(rows))
        for start in range(0, len(x), block):
            at = np.flatnonzero((rows >= start) & (rows < start + block))
            if len(at):
                reads.append(start)
                out[at] = np.einsum("ij,ij->i", x[rows[at]].astype(np.float64), vectors[which[at]])
        return out
    return dots, reads


def test_split_sends_points_to_the_nearer_of_the_two_centroids():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    labels = np.zeros(40, dtype=np.int32)
    labels[[3, 9]] = -1   # rows without a feature stay unlabelled
    centroids = np.stack([x[labels == 0].mean(axis=0), np.full(4, 9.0)]).astype(np.float32)
    before = ((x[labels == 0] - centroids[0]) ** 2).sum()
    dots, _ = in_memory_dots(x)
    fix = kmeans.fill_empty_clusters(labels, centroids, seed=1, dots=dots)
    assert (fix.empty_before, fix.splits, fix.passes) == (1, 1, 1)
    assert (labels[[3, 9]] == -1).all() and set(labels[labels >= 0]) == {0, 1}
    assert np.allclose(centroids[1], centroids[0], atol=1e-2)  # a copy, slightly perturbed
    d = ((x[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    mine = labels >= 0
    assert np.array_equal(labels[mine], d[mine].argmin(axis=1))
    after = d[mine, labels[mine]].sum()
    assert before + fix.objective_change == pytest.approx(after, rel=1e-5)


def test_identical_points_are_halved_and_every_cluster_filled():
    x = np.repeat(np.eye(3, dtype=np.float32), [6, 1, 1], axis=0)   # 6 copies of one point
    labels = np.array([0] * 6 + [1, 2], dtype=np.int32)
    centroids = np.concatenate([np.eye(3), np.zeros((4, 3))]).astype(np.float32)  # 4 empty
    dots, reads = in_memory_dots(x, block=4)
    fix = kmeans.fill_empty_clusters(labels, centroids, seed=0, dots=dots)
    assert np.bincount(labels, minlength=7).min() == 1
    assert (fix.empty_before, fix.splits) == (4, 4)
    assert fix.passes >= 2   # one splittable cluster at first: 1 -> 2 -> 4 splittable
    assert set(reads) == {0, 4}


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 5)).astype(np.float32)
    results = []
    for _ in range(2):
        labels = (np.arange(60) % 3).astype(np.int32)
        centroids = np.zeros((8, 5), dtype=np.float32)
        centroids[:3] = x[:3]
        kmeans.fill_empty_clusters(labels, centroids, seed=5, dots=in_memory_dots(x)[0])
        results.append((labels.copy(), centroids.copy()))
    assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])


def test_no_splittable_cluster_is_an_error():
    labels = np.array([0, 1], dtype=np.int32)
    centroids = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="k > N"):
        kmeans.fill_empty_clusters(labels, centroids, seed=0, dots=in_memory_dots(np.zeros((2, 2)))[0])


def test_training_records_faiss_iterations_and_gpu_switch_degrades_to_cpu():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    centroids, iterations = kmeans.train_kmeans(x, 5, niter=6, seed=1, ngpu=kmeans.gpu_count("auto"))
    assert centroids.shape == (5, 8) and 1 <= len(iterations) <= 6
    assert iterations[0]["obj_mean"] == pytest.approx(iterations[0]["obj"] / 500)
    assert kmeans.gpu_count("no") == 0
    assert kmeans.gpu_count("yes") == kmeans.gpu_count("auto")  # no GPU: yes warns, runs on CPU
    with pytest.raises(ValueError, match="use_gpu"):
        kmeans.gpu_count("maybe")
    labels, dist = kmeans.nearest(kmeans.flat_index(centroids, 0), x)
    assert labels.dtype == np.int32
    assert np.allclose(dist, ((x - centroids[labels]) ** 2).sum(axis=1), atol=1e-4)
