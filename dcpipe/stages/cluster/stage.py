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
also after a run killed at any point is started again, and under torchrun with any number of
processes (passes.py says how; docs/cluster.md, "Under torchrun").
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
from dcpipe.stages.common.distributed import ProcessGroup, local_world_size
from dcpipe.stages.common.featurereader import (block_rows, open_complete, read_keys,
                                                read_true_labels, read_valid, shard_names)
from dcpipe.stages.common.labels import save_npy, write_labels
from dcpipe.stages.common.seeds import Domain
from dcpipe.stages.common.whitening import WhiteningPCA

log = logging.getLogger(__name__)

# PCA statistics come from at most this many rows per feature dimension, faiss.PCAMatrix's own
# bound (a uniform sample of its own, drawn like the k-means sample).
PCA_ROWS_PER_DIM = 1000


def _check(settings: ClusterSettings, n_valid: int) -> None:
    k = settings.largest_k
    if settings.method == "kmeans" and k > n_valid:
        raise SettingsError(f"k={k} clusters but the feature store has only N={n_valid} valid "
                            f"samples: choose k <= {n_valid}")


class Timer(dict):
    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self[phase] = round(time.perf_counter() - start, 3)


def cluster(store_path, out_dir, settings: ClusterSettings = ClusterSettings(), *, seed: int = 0,
            round_index: int | None = None, prev_labels_dir=None, chunk_rows: int | None = None,
            progress: bool = True) -> dict:
    """Cluster every valid row of the store; write pca.npz, centroids.npy, labels/, clusters.json
    (and, with settings.heads > 1, each further head's centroids and labels: outputs.py).

    seed and round_index drive the samples, faiss and the empty-cluster fix (seeds.Domain); each
    head has its own k-means seed. settings.sample_size: rows PCA and k-means are fitted on (at
    most N). settings.pca_dim = 0: no PCA, rows only L2-normalised and spherical k-means
    (DeepCluster-v2). settings.refine_passes: k-means fitted on a sample smaller than N then
    makes this many Lloyd passes over every row of the store (see _refine). chunk_rows: rows per
    read block (rounded to whole store chunks; None: ~8 MB). PIC takes its number of clusters
    from the graph and ignores k. Returns the clusters.json record (head 0's, with a summary of
    the others under "heads").

    Under torchrun (call it on every rank) the ranks split the store's blocks between them and
    write the same files, bit for bit, as one process would: only rank 0 writes them, and every
    rank returns its record once they exist.
    """
    started = time.perf_counter()
    group = ProcessGroup.start()
    out_dir = Path(out_dir)
    store = open_complete(store_path)
    valid = read_valid(store)
    n_valid = int(valid.sum())
    _check(settings, n_valid)
    r = round_index or 0
    sample = RowSample(valid, store.chunk_rows, min(settings.sample_size, n_valid),
                       seeds.int_seed(seed, r, Domain.CLUSTER_SAMPLE))
    writes = group.rank == 0
    share = storepasses.Share(store, block_rows(store, chunk_rows), group, progress and writes)
    if writes:
        out_dir.mkdir(parents=True, exist_ok=True)
        # from here on the round's old results are being replaced: not done until clusters.json is back
        (out_dir / outputs.RECORD).unlink(missing_ok=True)
    timer = Timer()
    pca_rows = RowSample(valid, store.chunk_rows, min(sample.size, PCA_ROWS_PER_DIM * store.dim),
                         seeds.int_seed(seed, r, Domain.PCA_SAMPLE))
    with timer("pca"):
        pca = (storepasses.fit_pca(share, pca_rows, min(settings.pca_dim, store.dim))
               if settings.pca_dim else WhiteningPCA.normalise_only(store.dim))
    with timer("sample"):
        held = storepasses.project_sample(share, sample, pca)
    advice = kmeans.small_sample_warning(sample.size, settings.largest_k)
    if share.progress and settings.method == "kmeans" and advice:
        log.warning(advice)
    run = HeadRun(share, valid, sample, pca, held, settings)
    records = [run.head(h, seeds.int_seed(seed, r, Domain.KMEANS, h, bits=31),
                        seeds.int_seed(seed, r, Domain.EMPTY_SPLIT, h), timer)
               for h in range(settings.heads)]
    record = None
    if writes:
        record = _write(out_dir, store, records, pca, PreviousRound(prev_labels_dir), timer,
                        {"round": round_index, "method": settings.method, "seed": seed})
        record.update(k_requested=settings.head_k(0), niter=settings.niter,
                      pca_dim=pca.out_dim if settings.pca_dim else 0, feature_dim=store.dim,
                      eigen_power=-0.5 if settings.pca_dim else 0.0, n_rows=store.n_rows,
                      n_samples=n_valid, n_failed=int(store.shard_count.sum()) - n_valid,
                      sample_size=sample.size, pca_rows=pca_rows.size if settings.pca_dim else 0,
                      sample_is_everything=bool(sample.everything), block_rows=share.block,
                      world_size=group.world, device=run.device,
                      faiss_version=faiss.__version__, store=str(store.path),
                      timings=dict(timer), seconds=round(time.perf_counter() - started, 3))
        atomic_write_json(out_dir / outputs.RECORD, record)
        log.info("clustered %d samples into %d clusters (%s, sample %d, %d heads, %d processes) "
                 "in %.1f s", n_valid, record["k"], settings.method, sample.size, settings.heads,
                 group.world, record["seconds"])
    return group.broadcast_object(record)  # also keeps every rank here until the files exist


def _write(out_dir: Path, store, records: list, pca: WhiteningPCA, prev: PreviousRound, timer,
           meta: dict) -> dict:
    """pca.npz, each head's centroids and labels; returns head 0's record so far."""
    with timer("write"):
        pca.save(out_dir / outputs.PCA)
        for h, (labels, centroids, _) in enumerate(records):
            save_npy(out_dir / outputs.centroids_file(h), centroids)
            write_labels(out_dir, _shard_labels(store, labels, prev if h == 0 else PreviousRound(None)),
                         {"k": len(centroids), **meta, "head": h}, folder=outputs.labels_folder(h))
    record = records[0][2]
    record.update(prev.scores())
    record.update(k=len(records[0][1]), **meta)
    if len(records) > 1:
        record["heads"] = [{key: rec[key] for key in HEAD_SUMMARY if key in rec}
                           for _, _, rec in records[1:]]
    return record


HEAD_SUMMARY = ("k", "objective_final", "sizes", "empty_before_fix", "nmi_true", "acc_true")


class HeadRun:
    """What every head of a round shares: the store, this rank's share of it, the sample
    (projected, in RAM), the PCA."""

    def __init__(self, share: storepasses.Share, valid, sample, pca, held: storepasses.SampleRows,
                 settings: ClusterSettings):
        self.share, self.valid, self.sample = share, valid, sample
        self.pca, self.held, self.settings = pca, held, settings
        self.ngpu = kmeans.gpu_count(settings.use_gpu)
        self.n_valid = int(valid.sum())
        self.spherical = settings.pca_dim == 0

    @property
    def device(self) -> str:
        return f"gpu x{self.ngpu}" if self.ngpu else "cpu"

    def _assign(self, assign, labels) -> float:
        """Every valid row of this rank's blocks labelled; the distance total of every rank."""
        return storepasses.assign_rows(self.share, self.valid, self.sample, self.held, self.pca,
                                       assign, labels)

    def _fit(self, k: int, kmeans_seed: int, split_seed: int):
        s, group = self.settings, self.share.group
        if s.method == "pic":
            return PicFit.on_sample(group, self.held.x, self.sample.size, self.ngpu)
        return KMeansFit.on_sample(group, self.held.x, k=k, niter=s.niter, seed=kmeans_seed,
                                   split_seed=split_seed, ngpu=self.ngpu, spherical=self.spherical)

    def head(self, h: int, kmeans_seed: int, split_seed: int, timer) -> tuple:
        """(labels per store row, centroids, record) of head h, the same on every rank (the
        record: apart from the true-label scores, which only rank 0 computes)."""
        s, sample = self.settings, self.sample
        suffix = f"_head{h}" if h else ""
        with timer("train" + suffix):
            model = self._fit(s.head_k(h), kmeans_seed, split_seed)
        labels = np.full(self.share.store.n_rows, -1, dtype=np.int32)
        with timer("refine" + suffix):  # a sample of every row is already fitted on everything
            passes = s.refine_passes if s.method == "kmeans" and not sample.everything else 0
            refined = _refine(model, passes, lambda assign: self._assign(assign, labels),
                              self.n_valid, self.share.group)
        with timer("assign" + suffix):
            dist_sum = self._assign(model.assign, labels)
            self.share.group.reduce_array(labels, "max")  # -1 where another rank labelled the row
        with timer("finish" + suffix):
            record = model.finish(labels, dist_sum, sample, storepasses.row_dots(self.share, self.pca))
        if self.share.group.rank == 0:
            record.update(true_label_scores(labels, read_true_labels(self.share.store)))
        record.update(k=len(model.centroids), refine_passes=passes, objective_refine=refined)
        return labels, model.centroids, record


def _refine(model, passes: int, assign_everything, n_valid: int, group: ProcessGroup) -> list[float]:
    """Lloyd iterations over the whole store after the fit on a sample: each pass assigns every
    valid row (the sampled ones from RAM, the rest streamed) and moves each centroid to the mean
    of its rows, so that centroids fitted on a sample settle on the collection (with ~50 sampled
    points per centroid the fit alone lands ~1% above k-means on everything; docs/cluster.md).
    Memory: k x d sums. Returns the objective over all rows before each move."""
    objective = []
    for _ in range(passes):
        sums = kmeans.CentroidSums(*model.centroids.shape)
        objective.append(assign_everything(sums.accumulating(model.assign)) / n_valid)
        model.move_to(sums.over_ranks(group).means(model.centroids))
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

    def __init__(self, centroids: np.ndarray, iterations: list, *, split_seed: int, ngpu: int,
                 spherical: bool):
        self.iterations, self.split_seed, self.ngpu, self.spherical = iterations, split_seed, ngpu, spherical
        self.move_to(centroids)

    @classmethod
    def on_sample(cls, group: ProcessGroup, x: np.ndarray, *, k: int, niter: int, seed: int,
                  **options) -> "KMeansFit":
        """Fitted once, on rank 0 (which holds the whole sample); every rank gets its centroids."""
        if group.rank == 0:
            with kmeans.host_threads(local_world_size()):
                centroids, iterations = kmeans.train_kmeans(x, k, niter, seed, options["ngpu"],
                                                            options["spherical"])
        else:
            centroids, iterations = np.empty((k, x.shape[1]), dtype=np.float32), []
        return cls(group.broadcast_array(centroids), iterations, **options)

    def move_to(self, centroids: np.ndarray) -> None:
        if self.spherical:  # spherical k-means keeps its centroids on the unit sphere
            centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        self.centroids = centroids.astype(np.float32)
        self.index = kmeans.flat_index(centroids, self.ngpu)

    def assign(self, rows: np.ndarray):
        return kmeans.nearest(self.index, rows)

    def finish(self, labels, dist_sum: float, sample: RowSample, dots) -> dict:
        fix = kmeans.fill_empty_clusters(labels, self.centroids, self.split_seed, dots)
        if self.spherical:
            self.move_to(self.centroids)
        sizes = np.bincount(labels[labels >= 0], minlength=len(self.centroids))
        return {"objective": [it["obj_mean"] for it in self.iterations], "iterations": self.iterations,
                "objective_final": (dist_sum + fix.objective_change) / int((labels >= 0).sum()),
                "sizes": size_summary(sizes), "empty_before_fix": fix.empty_before,
                "empty_fix": {"splits": fix.splits, "passes": fix.passes}}


class PicFit:
    """PIC on the sample; every other row takes the cluster of its nearest sampled row.

    Centroids (for centroids.npy) are the means of the sampled rows of each cluster.
    """

    def __init__(self, x: np.ndarray, sample_labels: np.ndarray, ngpu: int):
        self.sample_labels = sample_labels
        self.index = kmeans.flat_index(x, ngpu)  # faiss keeps its own copy of the sample
        n_clusters = int(self.sample_labels.max()) + 1
        self.centroids = np.zeros((n_clusters, x.shape[1]), dtype=np.float32)
        np.add.at(self.centroids, self.sample_labels, x)
        self.centroids /= np.bincount(self.sample_labels, minlength=n_clusters)[:, None]

    @classmethod
    def on_sample(cls, group: ProcessGroup, x: np.ndarray, sample_size: int, ngpu: int) -> "PicFit":
        """PIC runs once, on rank 0 (which holds the whole sample); the other ranks get the
        sample and its labels, to label their rows by the nearest sampled one."""
        with kmeans.host_threads(local_world_size()):
            labels = group.broadcast_object(pic(x, ngpu) if group.rank == 0 else None)
        whole = x if group.rank == 0 else np.empty((sample_size, x.shape[1]), dtype=np.float32)
        return cls(group.broadcast_array(whole), labels, ngpu)

    def assign(self, rows: np.ndarray):
        at, dist = kmeans.nearest(self.index, rows)
        return self.sample_labels[at], dist

    def finish(self, labels, dist_sum: float, sample: RowSample, dots) -> dict:
        for rows, first in sample.by_chunk():  # a sampled row keeps its own label, even among duplicates
            labels[rows] = self.sample_labels[first:first + len(rows)]
        sizes = np.bincount(labels[labels >= 0], minlength=len(self.centroids))
        return {"objective": [], "iterations": [], "objective_final": None, "sizes": size_summary(sizes),
                "empty_before_fix": 0, "empty_fix": {"splits": 0, "passes": 0}}
