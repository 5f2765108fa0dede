import numpy as np
from scipy.sparse import csr_matrix

from dcpipe.stages.cluster import pic
from support.featurestores import blobs


def test_pointers_climb_to_local_maxima_of_v():
    # a path 0-1-2-3-4 with v peaking at 1 and at 4: two clusters {0,1,2} and {3,4}
    edges = [(0, 1), (1, 2), (2, 3), (3, 4)]
    rows, cols = zip(*(edges + [(j, i) for i, j in edges]))
    w = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(5, 5))
    w.sort_indices()
    v = np.array([0.1, 0.5, 0.2, 0.3, 0.9], dtype=np.float32)
    assert pic.local_maxima(w, v).tolist() == [0, 0, 0, 1, 1]


def test_singletons_join_their_nearest_non_singleton_neighbour():
    clusters = np.array([0, 0, 1, 2, 2, 3])
    ids = np.array([[1, 2], [0, 2], [5, 3], [4, 2], [3, 2], [2, 0]])  # 2 and 5 are alone
    # 2's neighbours: 5 (alone too), then 3 (cluster 2); 5's: 2 (alone), then 0 (cluster 0)
    assert pic.join_singletons(clusters, ids).tolist() == [0, 0, 1, 1, 1, 0]


def test_pic_never_mixes_separated_blobs():
    x, blob = blobs(600, 8, 3, seed=2, spread=0.2)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = pic.pic(x)
    assert labels.dtype == np.int32 and labels.min() == 0
    assert np.bincount(labels).min() >= 2   # singletons were distributed
    for c in range(labels.max() + 1):
        assert len(np.unique(blob[labels == c])) == 1
