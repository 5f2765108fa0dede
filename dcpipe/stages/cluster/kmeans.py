"""FAISS k-means on a sample, nearest-centroid search, and the paper's empty-cluster rule.

GPU is a thin switch: the same IndexFlatL2 is moved to every visible GPU when faiss has any and
the caller allows it; everything else is identical, so CPU and GPU agree up to float rounding.
"""

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np
import scipy.sparse
from threadpoolctl import threadpool_limits

from dcpipe.errors import SettingsError

log = logging.getLogger(__name__)

# Perturbation of a copied centroid, relative to its norm (faiss's own split uses 1/1024).
SPLIT_EPS = 1e-3

FAISS_MIN_POINTS = 39  # faiss's default min_points_per_centroid

FIXED_POINT_BITS = 30  # fraction bits of the refine passes' integer centroid sums


def gpu_count(use_gpu: str) -> int:
    """How many GPUs to use: 'auto' -> all visible, 'no' -> none, 'yes' -> all (warn if none)."""
    if use_gpu not in ("auto", "yes", "no"):
        raise SettingsError(f"use_gpu must be 'auto', 'yes' or 'no', got {use_gpu!r}")
    available = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu == "yes" and available == 0:
        log.warning("use_gpu = yes but faiss sees no GPU: running on CPU")
    return 0 if use_gpu == "no" else available


@contextmanager
def host_threads(local_ranks: int):
    """faiss (its OpenMP and its BLAS) on the threads of all this host's ranks while the others
    wait for this one (rank 0's fit on the sample): torchrun gives each rank
    OMP_NUM_THREADS=1, which would leave the fit on one core. faiss's k-means gives the same
    bits on any thread count."""
    with threadpool_limits(limits=min(faiss.omp_get_max_threads() * local_ranks, os.cpu_count() or 1)):
        yield


def flat_index(centroids_or_dim, ngpu: int):
    """Exact L2 index (on the GPUs when ngpu > 0), holding `centroids` if given."""
    dim = centroids_or_dim if isinstance(centroids_or_dim, int) else centroids_or_dim.shape[1]
    index = faiss.IndexFlatL2(dim)
    if ngpu:
        index = faiss.index_cpu_to_all_gpus(index, ngpu=ngpu)
    if not isinstance(centroids_or_dim, int):
        index.add(np.ascontiguousarray(centroids_or_dim, dtype=np.float32))
    return index


def train_kmeans(x: np.ndarray, k: int, niter: int, seed: int, ngpu: int,
                 spherical: bool = False) -> tuple[np.ndarray, list]:
    """Fit k centroids to x (n, d) float32; return them and faiss's per-iteration stats.

    `obj` is faiss's objective of the iteration: the sum over x of squared distances to the
    nearest centroid (we add its mean per point); `elapsed` is seconds since training began.
    faiss stops early once the objective no longer changes. x is already our sample, so faiss must not
    subsample it again (max_points_per_centroid is raised above n / k). `spherical`: centroids
    are re-normalised after each iteration (DeepCluster-v2's k-means on unit rows).
    """
    n, d = x.shape
    clus = faiss.Clustering(d, k)
    clus.niter = niter
    clus.seed = seed
    clus.spherical = spherical
    clus.max_points_per_centroid = n // k + 1
    # faiss warns of fewer than min_points_per_centroid x k rows straight on fd 2, which no -q
    # could silence; the stage says it instead where progress is shown (small_sample_warning)
    clus.min_points_per_centroid = 1
    clus.train(np.ascontiguousarray(x, dtype=np.float32), flat_index(d, ngpu))
    stats = clus.iteration_stats
    per_iteration = [{"obj": float(s.obj), "obj_mean": float(s.obj) / n, "nsplit": int(s.nsplit),
                      "imbalance": float(s.imbalance_factor), "elapsed": float(s.time)}
                     for s in (stats.at(i) for i in range(stats.size()))]
    return faiss.vector_to_array(clus.centroids).reshape(k, d), per_iteration


def small_sample_warning(n: int, k: int) -> str | None:
    """faiss's advice on the sample size (its default min_points_per_centroid), or None."""
    if n >= FAISS_MIN_POINTS * k:
        return None
    return (f"k-means of {n} rows into {k} clusters: faiss advises at least "
            f"{FAISS_MIN_POINTS * k} rows ({FAISS_MIN_POINTS} per cluster)")


def nearest(index, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label int32, squared distance float32) of each row's nearest centroid."""
    dist, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return ids[:, 0].astype(np.int32), dist[:, 0]


class CentroidSums:
    """Per-centroid sums and counts of the rows assigned to each: one Lloyd update, accumulated
    block by block over a stream, in O(k x d) memory.

    The sums are exact integers (int64 fixed point, FIXED_POINT_BITS fraction bits), so they
    add up to the same bits in any order: across blocks, and across ranks (`over_ranks`). The
    rows are L2-normalised (|component| <= 1), so a centroid's sum stays below 2^62 while it has
    fewer than 2^32 rows; quantising to 2^-31 is below float32's precision of the means for any
    component above 2^-7.
    """

    def __init__(self, k: int, d: int):
        self.sums = np.zeros((k, d), dtype=np.int64)
        self.counts = np.zeros(k, dtype=np.int64)

    def add(self, rows: np.ndarray, labels: np.ndarray) -> None:
        # float32 rows: scaling by a power of two and rounding to an integer are exact in float32
        scaled = rows * np.float32(2.0 ** FIXED_POINT_BITS)
        fixed = np.rint(scaled, out=scaled).astype(np.int64)
        one_hot = scipy.sparse.csr_matrix(
            (np.ones(len(labels), dtype=np.int64), (labels, np.arange(len(labels)))),
            shape=(len(self.counts), len(labels)))
        self.sums += one_hot @ fixed
        self.counts += np.bincount(labels, minlength=len(self.counts))

    def accumulating(self, assign):
        """`assign` that also adds every row to the sums of the centroid it was assigned to."""
        def assign_and_add(rows: np.ndarray):
            labels, dist = assign(rows)
            self.add(rows, labels)
            return labels, dist
        return assign_and_add

    def over_ranks(self, group) -> "CentroidSums":
        """Every rank's sums and counts added up (group: common.distributed.ProcessGroup)."""
        group.reduce_array(self.sums)
        group.reduce_array(self.counts)
        return self

    def means(self, old: np.ndarray) -> np.ndarray:
        """The new centroids: the mean of each one's rows; one that got no row stays where it was."""
        new = old.copy()
        hit = self.counts > 0
        scale = self.counts[hit, None] * 2.0 ** FIXED_POINT_BITS
        new[hit] = (self.sums[hit] / scale).astype(old.dtype)
        return new


@dataclass
class EmptyFix:
    empty_before: int = 0
    splits: int = 0
    passes: int = 0
    objective_change: float = 0.0   # change of the summed squared distances due to the splits


# dots(rows, vectors, which) -> float64 x_row . vectors[which[i]] for each of the sorted `rows`,
# x_row being the row's projected feature (read from the store).
RowDots = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def fill_empty_clusters(labels: np.ndarray, centroids: np.ndarray, seed: int, dots: RowDots) -> EmptyFix:
    """The paper's rule, out of core, until no cluster is empty. Edits labels and centroids in place.

    labels is the int32 label per store row (-1 for rows without a label): the only per-sample
    array held. In one pass, each empty cluster e gets a distinct source cluster j with at least
    two points, drawn with probability proportional to size(j) - 1 (as faiss does while
    training); c_e = c_j + delta, a random direction of norm SPLIT_EPS * |c_j|. The points of j
    go to the nearer of c_j and c_e, which needs only x . delta per point: the pass re-reads the
    blocks holding j's points. If that leaves a side empty (duplicated points sit exactly on c_j)
    the upper half by x . delta goes to e instead, ties broken by row order. Sides are never
    empty after a split, so every pass shrinks the empty set; more empties than splittable
    clusters take more passes (the number of splittable clusters at least doubles per pass).
    """
    k = len(centroids)
    rng = np.random.default_rng(seed)
    sizes = np.bincount(labels[labels >= 0], minlength=k)
    fix = EmptyFix(empty_before=int((sizes == 0).sum()))
    while (sizes == 0).any():
        empty = np.flatnonzero(sizes == 0)
        spare = np.maximum(sizes - 1, 0)
        n_pairs = min(len(empty), int((spare > 0).sum()))
        if n_pairs == 0:
            raise SettingsError(f"{len(empty)} empty clusters but no cluster with two points (k > N)")
        sources = rng.choice(k, size=n_pairs, replace=False, p=spare / spare.sum())
        targets = empty[:n_pairs]
        deltas = _perturb(centroids, sources, targets, rng)
        rows, slot, proj = _project_onto(labels, sources, deltas, dots)
        order = np.argsort(slot, kind="stable")   # stable: row order within each source
        bounds = np.searchsorted(slot[order], np.arange(n_pairs + 1))
        for s, (j, e) in enumerate(zip(sources, targets)):
            part = order[bounds[s]:bounds[s + 1]]
            centre_dot = float(centroids[j].astype(np.float64) @ deltas[s])
            to_new = _new_side(proj[part], centre_dot, deltas[s])
            labels[rows[part[to_new]]] = e
            sizes[e] = int(to_new.sum())
            sizes[j] -= sizes[e]
            # |x - c - d|^2 - |x - c|^2 = -2 x.d + 2 c.d + d.d for each moved point
            fix.objective_change += float(np.sum(2 * centre_dot + deltas[s] @ deltas[s]
                                                 - 2 * proj[part[to_new]]))
        fix.splits += n_pairs
        fix.passes += 1
    return fix


def _perturb(centroids: np.ndarray, sources, targets, rng) -> np.ndarray:
    """Set c_target = c_source + small random delta; return the deltas as stored (float64)."""
    c = centroids[sources].astype(np.float64)
    u = rng.standard_normal(c.shape)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    centroids[targets] = (c + SPLIT_EPS * np.where(norms > 0, norms, 1.0) * u).astype(centroids.dtype)
    return centroids[targets].astype(np.float64) - c


def _project_onto(labels, sources, deltas, dots: RowDots):
    """Rows of the source clusters (sorted), their source's slot, and x . delta for each."""
    slot_of = np.full(sources.max() + 1, -1, dtype=np.int32)
    slot_of[sources] = np.arange(len(sources))
    rows = np.flatnonzero(np.isin(labels, sources))
    slot = slot_of[labels[rows]]
    return rows, slot, dots(rows, deltas, slot)


def _new_side(proj: np.ndarray, centre_dot: float, delta: np.ndarray) -> np.ndarray:
    """Which points of a split cluster are nearer c + delta than c; never all or none."""
    to_new = proj > centre_dot + 0.5 * (delta @ delta)
    if to_new.all() or not to_new.any():
        to_new = np.zeros(len(proj), dtype=bool)
        to_new[np.argsort(proj, kind="stable")[len(proj) // 2:]] = True
    return to_new
