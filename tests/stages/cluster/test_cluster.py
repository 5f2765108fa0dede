import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from dcpipe.stages.common import metrics, seeds
from dcpipe.stages.cluster import ClusterSettings, cluster
from dcpipe.stages.common.seeds import Domain
from dcpipe.stages.common.labels import LabelsError, label_lookup, load_labels, read_index
from dcpipe.stages.common.whitening import WhiteningPCA
from dcpipe.stages.common.featurereader import StoreError
from support.featurestores import blobs, make_store

QUIET = {"progress": False}
RUN_OPTIONS = ("seed", "round_index", "prev_labels_dir", "chunk_rows", "progress")


def run_cluster(store, out, **options):
    """The stage with its settings given as keywords, like the tests' tables of cases."""
    run = {k: options.pop(k) for k in RUN_OPTIONS if k in options}
    return cluster(store, out, ClusterSettings(**options), **run)


def all_labels(labels_dir, names) -> np.ndarray:
    """Labels of every sample, shard after shard (the order make_store takes features in)."""
    return np.concatenate([load_labels(labels_dir, name)[1] for name in names])


def names_of(store) -> list[str]:
    return [f"{s:06d}" for s in range(len(json.loads((Path(store) / "zarr.json").read_text())
                                          ["attributes"]["shard_names"]))]


@pytest.fixture(scope="module")
def blob_store(tmp_path_factory):
    """1,200 samples of 8 blobs in 3 shards, 5% failed rows, true labels."""
    x, blob = blobs(1200, 24, 8, seed=1, spread=1.0, scale=3.0)
    valid = (np.random.default_rng(2).random(1200) > 0.05).astype(np.uint8)
    path = make_store(tmp_path_factory.mktemp("blobs") / "f.zarr", x, [500, 300, 400], 64,
                      true_labels=blob, valid=valid)
    return path, x, blob, valid.astype(bool)


def test_every_valid_sample_gets_exactly_one_label(blob_store, tmp_path):
    path, _, blob, valid = blob_store
    record = run_cluster(path, tmp_path / "0004", k=16, seed=1, pca_dim=16, round_index=4, **QUIET)
    index = read_index(tmp_path / "0004" / "labels")
    assert [s["count"] for s in index["shards"]] == [500, 300, 400]
    assert index["k"] == 16 and index["round"] == 4 and index["n_labelled"] == valid.sum()
    labels = all_labels(tmp_path / "0004" / "labels", ["000000", "000001", "000002"])
    assert (labels[~valid] == -1).all()
    assert ((labels[valid] >= 0) & (labels[valid] < 16)).all()
    keys, _ = load_labels(tmp_path / "0004" / "labels", "000001")
    assert keys == json.loads((path / "keys" / "000001.json").read_text())
    assert record["n_samples"] == valid.sum() and record["n_failed"] == (~valid).sum()
    assert np.bincount(labels[valid], minlength=16).min() > 0
    # evaluation against the true blobs, and the record's numbers are the metrics' numbers
    assert record["nmi_true"] == pytest.approx(metrics.nmi(labels, np.where(valid, blob, -1)))
    assert record["acc_true"] == pytest.approx(metrics.cluster_accuracy(labels, np.where(valid, blob, -1)))
    assert record["nmi_true"] > 0.85  # 16 clusters over 8 blobs
    assert len(record["objective"]) >= 2 and record["objective"][-1] <= record["objective"][0]
    on_disk = json.loads((tmp_path / "0004" / "clusters.json").read_text())
    assert on_disk == json.loads(json.dumps(record))


def test_final_objective_matches_the_saved_pca_centroids_and_labels(blob_store, tmp_path):
    path, x, _, valid = blob_store
    record = run_cluster(path, tmp_path, k=16, seed=2, pca_dim=16, **QUIET)
    pca = WhiteningPCA.load(tmp_path / "pca.npz")
    centroids = np.load(tmp_path / "centroids.npy")
    labels = all_labels(tmp_path / "labels", ["000000", "000001", "000002"])
    y = pca.apply(x.astype(np.float16)[valid])
    expected = ((y - centroids[labels[valid]]) ** 2).sum(axis=1).mean()
    assert record["objective_final"] == pytest.approx(expected, rel=1e-4)


def test_labels_are_deterministic_for_a_seed(blob_store, tmp_path):
    path = blob_store[0]
    names = ["000000", "000001", "000002"]
    runs = [run_cluster(path, tmp_path / str(i), k=16, seed=s, pca_dim=16, sample_size=600, **QUIET)
            for i, s in enumerate([5, 5, 6])]
    first, again, other = (all_labels(tmp_path / str(i) / "labels", names) for i in range(3))
    assert np.array_equal(first, again)
    assert np.array_equal(np.load(tmp_path / "0" / "centroids.npy"), np.load(tmp_path / "1" / "centroids.npy"))
    assert runs[0]["objective"] == runs[1]["objective"]
    assert not np.array_equal(first, other)


def test_read_block_size_does_not_change_labels_and_equals_the_in_memory_path(blob_store, tmp_path):
    path, x, _, valid = blob_store
    names = ["000000", "000001", "000002"]
    for rows in (64, 192, 100_000):
        run_cluster(path, tmp_path / str(rows), k=12, seed=3, pca_dim=16, chunk_rows=rows, **QUIET)
    streamed = [all_labels(tmp_path / str(rows) / "labels", names) for rows in (64, 192, 100_000)]
    assert np.array_equal(streamed[0], streamed[1]) and np.array_equal(streamed[0], streamed[2])
    # the authors' way, all in RAM: PCA-whitening of every feature, k-means on all, assign all
    feats = x.astype(np.float16)[valid].astype(np.float64)
    eigenvalues, vectors = np.linalg.eigh(np.cov(feats.T, bias=True))
    matrix = (vectors[:, ::-1][:, :16] / np.sqrt(eigenvalues[::-1][:16])).astype(np.float32)
    y = (feats - feats.mean(axis=0)).astype(np.float32) @ matrix
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    faiss_seed = seeds.int_seed(3, 0, Domain.KMEANS, bits=31)  # the stage's faiss seed for seed 3
    km = faiss.Kmeans(16, 12, niter=20, seed=faiss_seed, max_points_per_centroid=10**7)
    km.train(y)
    in_memory = km.index.search(y, 1)[1][:, 0]
    assert metrics.ari(streamed[0][valid], in_memory) == pytest.approx(1.0)


def test_a_sample_smaller_than_the_store_still_labels_every_row(blob_store, tmp_path):
    path, _, _, valid = blob_store
    names = ["000000", "000001", "000002"]
    for rows in (64, 100_000):
        record = run_cluster(path, tmp_path / str(rows), k=8, seed=4, pca_dim=16, sample_size=250,
                         chunk_rows=rows, **QUIET)
        assert record["sample_size"] == 250 and not record["sample_is_everything"]
    small, large = (all_labels(tmp_path / str(rows) / "labels", names) for rows in (64, 100_000))
    assert np.array_equal(small, large)  # the sample does not depend on the read block size
    assert (small[valid] >= 0).all() and (small[~valid] == -1).all()


def test_pca_statistics_come_from_at_most_1000_rows_per_dimension(tmp_path):
    x, blob = blobs(3000, 2, 3, seed=4, spread=0.5)
    path = make_store(tmp_path / "f.zarr", x, [1500, 1500], 256, true_labels=blob)
    record = run_cluster(path, tmp_path / "out", k=3, seed=0, **QUIET)
    assert (record["pca_dim"], record["pca_rows"], record["sample_size"]) == (2, 2000, 3000)
    assert record["nmi_true"] > 0.8


def test_no_empty_cluster_even_with_duplicated_points_and_large_k(tmp_path):
    base = np.random.default_rng(0).standard_normal((30, 16))
    x = np.repeat(base, 5, axis=0)  # 150 samples at only 30 distinct points
    path = make_store(tmp_path / "f.zarr", x, [80, 70], 16, dtype="float32")
    record = run_cluster(path, tmp_path / "out", k=100, seed=3, pca_dim=16, **QUIET)
    labels = all_labels(tmp_path / "out" / "labels", ["000000", "000001"])
    assert record["empty_before_fix"] >= 70  # 30 places for 100 clusters
    assert np.bincount(labels, minlength=100).min() == 1 and labels.max() == 99
    assert record["sizes"]["min"] == 1 and record["sizes"]["empty"] == 0
    centroids = np.load(tmp_path / "out" / "centroids.npy")
    y = WhiteningPCA.load(tmp_path / "out" / "pca.npz").apply(x)
    assert record["objective_final"] == pytest.approx(((y - centroids[labels]) ** 2).sum(1).mean(), rel=1e-3)


def test_k_larger_than_the_number_of_samples_is_refused(blob_store, tmp_path):
    path, _, _, valid = blob_store
    n = int(valid.sum())
    run_cluster(path, tmp_path, k=4, seed=0, pca_dim=8, **QUIET)
    with pytest.raises(ValueError, match=f"k={n + 1} .* N={n}"):
        run_cluster(path, tmp_path, k=n + 1, seed=0, **QUIET)
    assert (tmp_path / "clusters.json").exists()  # a refused run leaves the round as it was
    assert read_index(tmp_path / "labels")["k"] == 4
    with pytest.raises(ValueError, match="smaller than k"):
        run_cluster(path, tmp_path, k=50, seed=0, sample_size=20, **QUIET)


def test_bad_stores_are_refused(tmp_path):
    with pytest.raises(StoreError, match="no feature store"):
        run_cluster(tmp_path / "missing.zarr", tmp_path, k=2, seed=0, **QUIET)
    x, _ = blobs(40, 8, 2)
    x[7, 3] = np.nan
    path = make_store(tmp_path / "nan.zarr", x, [40], 16, dtype="float32")
    with pytest.raises(StoreError, match="non-finite"):
        run_cluster(path, tmp_path, k=2, seed=0, **QUIET)
    import zarr
    zarr.open_group(path, mode="r+").attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete"):
        run_cluster(path, tmp_path, k=2, seed=0, **QUIET)


def test_nmi_against_the_previous_round_matches_by_shard_and_key(tmp_path):
    x, _ = blobs(600, 16, 6, seed=3)
    make_store(tmp_path / "r0.zarr", x[:400], [200, 200], 32, shard_names=["a0", "a1"])
    # round 1: the collection grew by a shard, and its rows are in another store layout
    make_store(tmp_path / "r1.zarr", x, [200, 200, 200], 64, shard_names=["a0", "a1", "a2"])
    run_cluster(tmp_path / "r0.zarr", tmp_path / "0000", k=6, seed=1, pca_dim=8, **QUIET)
    record = run_cluster(tmp_path / "r1.zarr", tmp_path / "0001", k=6, seed=2, pca_dim=8,
                     prev_labels_dir=tmp_path / "0000" / "labels", **QUIET)
    prev = all_labels(tmp_path / "0000" / "labels", ["a0", "a1"])
    now = all_labels(tmp_path / "0001" / "labels", ["a0", "a1"])
    assert record["n_prev_matched"] == 400
    assert record["nmi_prev"] == pytest.approx(metrics.nmi(now, prev))
    assert record["nmi_true"] is None  # this store carries no true labels
    lookup = label_lookup(tmp_path / "0001" / "labels")
    assert lookup.label("a2", "a2000007") == all_labels(tmp_path / "0001" / "labels", ["a2"])[7]
    with pytest.raises(LabelsError, match="index.json"):
        label_lookup(tmp_path / "nowhere")


def test_pic_recovers_well_separated_blobs(tmp_path):
    x, blob = blobs(900, 16, 4, seed=5, spread=0.3, scale=5.0)
    path = make_store(tmp_path / "f.zarr", x, [450, 450], 64, true_labels=blob)
    record = run_cluster(path, tmp_path / "out", k=4, seed=0, pca_dim=8, method="pic",
                     sample_size=600, **QUIET)
    labels = all_labels(tmp_path / "out" / "labels", ["000000", "000001"])
    assert (labels >= 0).all() and record["k"] == labels.max() + 1 >= 4
    assert np.bincount(labels).min() > 0
    # every PIC cluster lies inside one blob (PIC over-segments; it never mixes)
    for c in range(record["k"]):
        assert len(np.unique(blob[labels == c])) == 1
    assert np.load(tmp_path / "out" / "centroids.npy").shape == (record["k"], 8)


RUN = """
import sys
from dcpipe.stages.cluster import ClusterSettings, cluster
cluster(sys.argv[1], sys.argv[2], ClusterSettings(k=20, pca_dim=8), seed=11, progress=False)
"""


def test_sigkill_while_writing_labels_then_rerun_gives_the_same_labels(tmp_path):
    x, _ = blobs(1200, 16, 10, seed=7)
    counts = [4] * 300  # many small shards: writing the label index takes a while
    path = make_store(tmp_path / "f.zarr", x, counts, 4)
    names = [f"{s:06d}" for s in range(300)]
    run_cluster(path, tmp_path / "whole", k=20, seed=11, pca_dim=8, **QUIET)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(path), str(out)])
    deadline = time.monotonic() + 60
    while not (out / ".labels.partial").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "labels").exists() and not (out / "clusters.json").exists()
    run_cluster(path, out, k=20, seed=11, pca_dim=8, **QUIET)
    assert np.array_equal(all_labels(out / "labels", names), all_labels(tmp_path / "whole" / "labels", names))
    assert not (out / ".labels.partial").exists()
    assert np.array_equal(np.load(out / "centroids.npy"), np.load(tmp_path / "whole" / "centroids.npy"))


def test_refine_passes_are_lloyd_iterations_over_every_row(blob_store, tmp_path):
    path, x, _, valid = blob_store
    runs = {p: run_cluster(path, tmp_path / str(p), k=16, seed=7, pca_dim=16, sample_size=200,
                       refine_passes=p, **QUIET) for p in (0, 1, 3)}
    assert [runs[p]["refine_passes"] for p in (0, 1, 3)] == [0, 1, 3]
    pca = WhiteningPCA.load(tmp_path / "0" / "pca.npz")
    y = pca.apply(x.astype(np.float16)[valid]).astype(np.float64)
    fitted = np.load(tmp_path / "0" / "centroids.npy").astype(np.float64)
    # one pass, in RAM: every row to its nearest sample-fitted centroid, centroids to their means
    nearest = ((y[:, None, :] - fitted[None]) ** 2).sum(axis=2).argmin(axis=1)
    moved = np.array([y[nearest == c].mean(axis=0) if (nearest == c).any() else fitted[c] for c in range(16)])
    assert runs[0]["empty_before_fix"] == runs[1]["empty_before_fix"] == 0  # centroids.npy = as fitted
    np.testing.assert_allclose(np.load(tmp_path / "1" / "centroids.npy"), moved, atol=1e-5)
    assert runs[1]["objective_refine"][0] == pytest.approx(
        ((y - fitted[nearest]) ** 2).sum(axis=1).mean(), rel=1e-4)
    # Lloyd never raises the objective over all rows
    final = [runs[p]["objective_final"] for p in (0, 1, 3)]
    assert final[2] <= final[1] <= final[0] and final[2] < final[0]
    assert runs[3]["objective_refine"] == sorted(runs[3]["objective_refine"], reverse=True)


def test_no_refine_pass_when_the_sample_is_every_row(blob_store, tmp_path):
    record = run_cluster(blob_store[0], tmp_path, k=8, seed=1, pca_dim=16, refine_passes=2, **QUIET)
    assert record["sample_is_everything"] and record["refine_passes"] == 0
    assert record["objective_refine"] == []
    with pytest.raises(ValueError, match="refine_passes"):
        run_cluster(blob_store[0], tmp_path / "bad", k=8, seed=1, refine_passes=-1, **QUIET)


def test_spherical_heads_each_label_every_row_with_unit_centroids(blob_store, tmp_path):
    path, x, blob, valid = blob_store
    record = run_cluster(path, tmp_path, k=8, heads=3, pca_dim=0, seed=5, **QUIET)
    names = ["000000", "000001", "000002"]
    heads = [all_labels(tmp_path / folder, names) for folder in ("labels", "labels.1", "labels.2")]
    for h, labels in enumerate(heads):
        assert (labels[~valid] == -1).all() and (labels[valid] >= 0).all()
        centroids = np.load(tmp_path / ("centroids.npy" if h == 0 else f"centroids.{h}.npy"))
        assert centroids.shape == (8, 24)  # no PCA: the store's own dims
        assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
        assert read_index(tmp_path / ("labels" if h == 0 else f"labels.{h}"))["head"] == h
    # each head is its own k-means run (own seed), all of the same 8 well separated blobs
    assert metrics.nmi(heads[1][valid], blob[valid]) > 0.9
    assert record["pca_dim"] == 0 and len(record["heads"]) == 2
    assert record["heads"][0]["k"] == 8


def test_each_head_clusters_into_its_own_k(blob_store, tmp_path):
    path, _, _, valid = blob_store
    record = run_cluster(path, tmp_path, k=99, heads=3, k_per_head=[4, 8, 16], pca_dim=0,
                         seed=5, **QUIET)
    for h, (k, folder) in enumerate(zip((4, 8, 16), ("labels", "labels.1", "labels.2"))):
        labels = all_labels(tmp_path / folder, names_of(path))
        assert read_index(tmp_path / folder)["k"] == k
        assert set(labels[valid]) == set(range(k))  # every cluster used, none beyond k
        assert np.load(tmp_path / (f"centroids.{h}.npy" if h else "centroids.npy")).shape[0] == k
    assert record["k"] == record["k_requested"] == 4
    assert [head["k"] for head in record["heads"]] == [8, 16]
