"""The cluster stage: feature store -> PCA-whitened k-means (or PIC) -> label shard index.

    cluster(store, out_dir, ClusterSettings(...), seed=..., round_index=...) writes into out_dir
    (a round directory):
      pca.npz        mean, matrix (d x D: eigenvectors scaled by eigenvalue^-0.5), eigenvalues
      centroids.npy  (k, d) float32, after the empty-cluster fix
      labels/        the label shard index (common/labels.py), renamed into place complete
      clusters.json  the record (keys in docs/cluster.md), written last: the stage's commit

Memory: a bounded sample (sample_size x d float32) for PCA and k-means, k x d centroids, one
or two read blocks, and per-row arrays of a few bytes (valid, labels, true labels for the
evaluation). Never N x D. Everything is seeded: the same store and seed give the same labels,
also after a run killed at any point is started again.
"""

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from dcpipe.shards.atomic import atomic_write_json

from dcpipe.errors import SettingsError
from dcpipe.stages.cluster import kmeans
from dcpipe.stages.cluster import outputs
from dcpipe.stages.cluster import passes as storepasses
from dcpipe.stages.cluster.pic import pic
from dcpipe.stages.cluster.record import PreviousRound, size_summary, true_label_scores
from dcpipe.stages.cluster.rowsample import RowSample
from dcpipe.stages.cluster.settings import ClusterSettings
from dcpipe.stages.common import seeds
from dcpipe.stages.common.featurereader import (block_rows, open_complete, read_keys,
                                                read_true_labels, read_valid, shard_names)
from dcpipe.stages.common.labels import save_npy, write_labels
from dcpipe.stages.common.seeds import Domain

log = logging.getLogger(__name__)

# PCA statistics come from at most this many rows per feature dimension, faiss.PCAMatrix's own
# bound (a uniform sample of its own, drawn like the k-means sample).
PCA_ROWS_PER_DIM = 1000


def _check(settings: ClusterSettings, n_valid: int) -> None:
    if settings.method == "kmeans" and settings.k > n_valid:
        raise SettingsError(f"k={settings.k} clusters but the feature store has only N={n_valid} "
                            f"valid samples: choose k <= {n_valid}")


class Timer(dict):
    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self[phase] = round(time.perf_counter() - start, 3)


def cluster(store_path, out_dir, settings: ClusterSettings = ClusterSettings(), *, seed: int = 0,
            round_index: int | None = None, prev_labels_dir=None, chunk_rows: int | None = None,
            progress: bool = True) -> dict:
    """Cluster every valid row of the store; write pca.npz, centroids.npy, labels/, clusters.json.

    seed and round_index drive the samples, faiss and the empty-cluster fix (seeds.Domain).
    settings.sample_size: rows PCA and k-means are fitted on (at most N). settings.refine_passes:
    k-means fitted on a sample smaller than N then makes this many Lloyd passes over every row of
    the store (see _refine). chunk_rows: rows per read block (rounded to whole store chunks;
    None: ~8 MB). PIC takes its number of clusters from the graph and ignores k. Returns the
    clusters.json record.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = open_complete(store_path)
    valid = read_valid(store)
    n_valid = int(valid.sum())
    _check(settings, n_valid)
    k, method = settings.k, settings.method
    d = min(settings.pca_dim, store.dim)
    r = round_index or 0
    sample = RowSample(valid, store.chunk_rows, min(settings.sample_size, n_valid),
                       seeds.int_seed(seed, r, Domain.CLUSTER_SAMPLE))
    block = block_rows(store, chunk_rows)
    ngpu = kmeans.gpu_count(settings.use_gpu)
    # from here on the round's old results are being replaced: not done until clusters.json is back
    (out_dir / outputs.RECORD).unlink(missing_ok=True)
    timer = Timer()
    pca_rows = RowSample(valid, store.chunk_rows, min(sample.size, PCA_ROWS_PER_DIM * store.dim),
                         seeds.int_seed(seed, r, Domain.PCA_SAMPLE))
    with timer("pca"):
        pca = storepasses.fit_pca(store, pca_rows, block, d, progress)
    with timer("sample"):
        x = storepasses.project_sample(store, sample, block, pca, progress)
    with timer("train"):
        fit = KMeansFit if method == "kmeans" else PicFit
        model = fit(x, k=k, niter=settings.niter, ngpu=ngpu,
                    seed=seeds.int_seed(seed, r, Domain.KMEANS, bits=31),
                    split_seed=seeds.int_seed(seed, r, Domain.EMPTY_SPLIT))
    labels = np.full(store.n_rows, -1, dtype=np.int32)

    def assign_rest(assign) -> float:
        return storepasses.assign_rest(store, valid, sample, block, pca, assign, labels, progress)

    def assign_everything(assign) -> float:
        return storepasses.assign_sample(x, sample, assign, labels) + assign_rest(assign)

    with timer("refine"):  # a sample of every row is already fitted on everything
        passes = settings.refine_passes if method == "kmeans" and not sample.everything else 0
        refined = _refine(model, passes, assign_everything, n_valid)
    with timer("assign"):
        dist_sum = storepasses.assign_sample(x, sample, model.assign, labels)
        del x  # k-means keeps only its centroids, PIC its index of the sample
        dist_sum += assign_rest(model.assign)
    with timer("finish"):
        record = model.finish(labels, dist_sum, sample, storepasses.row_stream(store, block, pca, progress))
    centroids = model.centroids
    record.update(true_label_scores(labels, read_true_labels(store)))
    with timer("write"):
        pca.save(out_dir / outputs.PCA)
        save_npy(out_dir / outputs.CENTROIDS, centroids)
        meta = {"k": len(centroids), "round": round_index, "method": method, "seed": seed}
        prev = PreviousRound(prev_labels_dir)
        write_labels(out_dir, _shard_labels(store, labels, prev), meta)
    record.update(prev.scores())
    record.update(meta, k_requested=k, niter=settings.niter, refine_passes=passes, objective_refine=refined,
                  pca_dim=d, feature_dim=store.dim,
                  eigen_power=-0.5, n_rows=store.n_rows, n_samples=n_valid,
                  n_failed=int(store.shard_count.sum()) - n_valid, sample_size=sample.size, pca_rows=pca_rows.size,
                  sample_is_everything=bool(sample.everything), block_rows=block,
                  device=f"gpu x{ngpu}" if ngpu else "cpu", faiss_version=faiss.__version__,
                  store=str(store.path), timings=dict(timer),
                  seconds=round(time.perf_counter() - started, 3))
    atomic_write_json(out_dir / outputs.RECORD, record)
    log.info("clustered %d samples into %d clusters (%s, sample %d) in %.1f s", n_valid,
             record["k"], method, sample.size, record["seconds"])
    return record


def _refine(model, passes: int, assign_everything, n_valid: int) -> list[float]:
    """Lloyd iterations over the whole store after the fit on a sample: each pass assigns every
    valid row (the sampled ones from RAM, the rest streamed) and moves each centroid to the mean
    of its rows, so that centroids fitted on a sample settle on the collection (with ~50 sampled
    points per centroid the fit alone lands ~1% above k-means on everything; docs/cluster.md).
    Memory: k x d sums. Returns the objective over all rows before each move."""
    objective = []
    for _ in range(passes):
        sums = kmeans.CentroidSums(*model.centroids.shape)
        objective.append(assign_everything(sums.accumulating(model.assign)) / n_valid)
        model.move_to(sums.means(model.centroids))
    return objective


def _shard_labels(store, labels: np.ndarray, prev: PreviousRound):
    """(name, keys, labels) per shard, in the shard's tar order, feeding the previous-round match."""
    for s, name in enumerate(shard_names(store)):
        first = store.shard_offset[s]
        keys = read_keys(store, s)
        mine = labels[first:first + store.shard_count[s]]
        prev.add(name, keys, mine)
        yield name, keys, mine


class KMeansFit:
    """FAISS k-means on the sample; rows go to their nearest centroid; empty clusters split."""

    def __init__(self, x: np.ndarray, *, k: int, niter: int, seed: int, split_seed: int, ngpu: int):
        self.split_seed, self.ngpu = split_seed, ngpu
        centroids, self.iterations = kmeans.train_kmeans(x, k, niter, seed, ngpu)
        self.move_to(centroids)

    def move_to(self, centroids: np.ndarray) -> None:
        self.centroids = centroids
        self.index = kmeans.flat_index(centroids, self.ngpu)

    def assign(self, rows: np.ndarray):
        return kmeans.nearest(self.index, rows)

    def finish(self, labels, dist_sum: float, sample: RowSample, stream) -> dict:
        fix = kmeans.fill_empty_clusters(labels, self.centroids, self.split_seed, stream)
        sizes = np.bincount(labels[labels >= 0], minlength=len(self.centroids))
        return {"objective": [it["obj_mean"] for it in self.iterations], "iterations": self.iterations,
                "objective_final": (dist_sum + fix.objective_change) / int((labels >= 0).sum()),
                "sizes": size_summary(sizes), "empty_before_fix": fix.empty_before,
                "empty_fix": {"splits": fix.splits, "passes": fix.passes}}


class PicFit:
    """PIC on the sample; every other row takes the cluster of its nearest sampled row.

    Centroids (for centroids.npy) are the means of the sampled rows of each cluster.
    """

    def __init__(self, x: np.ndarray, *, ngpu: int, **_):
        self.sample_labels = pic(x, ngpu)
        self.index = kmeans.flat_index(x, ngpu)  # faiss keeps its own copy of the sample
        n_clusters = int(self.sample_labels.max()) + 1
        self.centroids = np.zeros((n_clusters, x.shape[1]), dtype=np.float32)
        np.add.at(self.centroids, self.sample_labels, x)
        self.centroids /= np.bincount(self.sample_labels, minlength=n_clusters)[:, None]

    def assign(self, rows: np.ndarray):
        at, dist = kmeans.nearest(self.index, rows)
        return self.sample_labels[at], dist

    def finish(self, labels, dist_sum: float, sample: RowSample, stream) -> dict:
        for rows, first in sample.by_chunk():  # a sampled row keeps its own label, even among duplicates
            labels[rows] = self.sample_labels[first:first + len(rows)]
        sizes = np.bincount(labels[labels >= 0], minlength=len(self.centroids))
        return {"objective": [], "iterations": [], "objective_final": None, "sizes": size_summary(sizes),
                "empty_before_fix": 0, "empty_fix": {"splits": 0, "passes": 0}}
