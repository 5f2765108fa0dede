"""Power Iteration Clustering on a k-NN graph, with the reference's settings.

As in the authors' code: a graph of each point's 5 nearest neighbours weighted
exp(-d^2 / sigma^2) (sigma 0.2) and symmetrised; 200 iterations of
v <- alpha W'v + (1 - alpha) / n, L1-normalised (alpha 0.001); every node points to the
neighbour with the largest W_ij (v_j - v_i) > 0 and clusters are the local maxima reached by
following pointers; singletons join the cluster of their nearest non-singleton neighbour.
The number of clusters comes out of the graph: PIC does not take k.
"""

import numpy as np
from scipy.sparse import csr_matrix

from dcpipe.stages.cluster.kmeans import flat_index

NEIGHBOURS = 5
SIGMA = 0.2
ALPHA = 0.001
ITERATIONS = 200


def knn_graph(x: np.ndarray, nnn: int, ngpu: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nnn nearest other rows and squared distances (first hit, the row itself, dropped)."""
    if len(x) <= nnn:
        raise ValueError(f"PIC needs more than {nnn} points, got {len(x)}")
    index = flat_index(x, ngpu)
    dist, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), nnn + 1)
    return ids[:, 1:], dist[:, 1:]


def adjacency(ids: np.ndarray, dist: np.ndarray, sigma: float) -> csr_matrix:
    n, nnn = ids.shape
    weights = np.exp(-dist.astype(np.float64) / sigma ** 2)
    a = csr_matrix((weights.ravel(), ids.ravel(), np.arange(n + 1) * nnn), shape=(n, n))
    w = (a + a.T).tocsr()
    w.sort_indices()
    return w


def power_iterate(w: csr_matrix, alpha: float, iterations: int) -> np.ndarray:
    n = w.shape[0]
    wt = w.T.tocsr()
    v = np.full(n, 1.0 / n, dtype=np.float32)
    for _ in range(iterations):
        v = (alpha * (wt @ v) + (1 - alpha) / n).astype(np.float32)
        v /= v.sum()
    return v


def local_maxima(w: csr_matrix, v: np.ndarray) -> np.ndarray:
    """Cluster id per node: the local maximum of v its pointer chain ends at, ids in node order."""
    n = w.shape[0]
    row = np.repeat(np.arange(n), np.diff(w.indptr))
    gain = w.data * (v[w.indices] - v[row])
    # per row, the neighbour of largest gain; ties go to the lower column index
    order = np.lexsort((w.indices, -gain, row))
    first = order[np.searchsorted(row[order], np.arange(n))[np.diff(w.indptr) > 0]]
    pointer = np.arange(n)
    up = gain[first] > 0
    pointer[row[first[up]]] = w.indices[first[up]]
    while True:  # pointer jumping: v strictly increases along a chain, so there is no cycle
        jumped = pointer[pointer]
        if np.array_equal(jumped, pointer):
            break
        pointer = jumped
    return np.unique(pointer, return_inverse=True)[1]


def join_singletons(clusters: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Move each singleton to the cluster of its nearest neighbour that is not a singleton."""
    sizes = np.bincount(clusters)
    lonely = np.flatnonzero(sizes[clusters] == 1)
    if len(lonely):
        crowded = sizes[clusters[ids[lonely]]] > 1
        has = crowded.any(axis=1)
        nearest = ids[lonely, np.argmax(crowded, axis=1)]
        clusters = clusters.copy()
        clusters[lonely[has]] = clusters[nearest[has]]
    return np.unique(clusters, return_inverse=True)[1].astype(np.int32)


def pic(x: np.ndarray, ngpu: int = 0, nnn: int = NEIGHBOURS, sigma: float = SIGMA,
        alpha: float = ALPHA, iterations: int = ITERATIONS) -> np.ndarray:
    """Labels 0..c-1 (int32) of the rows of x (L2-normalised features)."""
    ids, dist = knn_graph(x, nnn, ngpu)
    w = adjacency(ids, dist, sigma)
    v = power_iterate(w, alpha, iterations)
    return join_singletons(local_maxima(w, v), ids)
