"""Agreement between two labellings: NMI, adjusted Rand index, clustering accuracy.

Labels are non-negative ints; -1 means "unknown" (an invalid row, a sample without a true
class, a sample absent from the other round) and such samples are left out of every score.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

UNKNOWN = -1


def known_pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    """The samples labelled in both: (a, b) restricted to positions where neither is -1."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"labellings must be 1-d and of the same length, got {a.shape} and {b.shape}")
    keep = (a != UNKNOWN) & (b != UNKNOWN)
    if not keep.any():
        raise ValueError("no sample is labelled in both labellings")
    return a[keep], b[keep]


def nmi(a, b) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (sklearn's default)."""
    a, b = known_pairs(a, b)
    return float(normalized_mutual_info_score(a, b, average_method="arithmetic"))


def ari(a, b) -> float:
    """Adjusted Rand index: 1 for identical partitions, ~0 for independent ones."""
    a, b = known_pairs(a, b)
    return float(adjusted_rand_score(a, b))


def contingency(a: np.ndarray, b: np.ndarray, shape: tuple | None = None) -> np.ndarray:
    """Dense co-occurrence counts over the label values present in a (rows) and b (columns);
    with `shape`, a and b are already row and column indices (absent ones count 0)."""
    if shape is None:
        a = np.unique(a, return_inverse=True)[1]
        b = np.unique(b, return_inverse=True)[1]
        shape = (a.max() + 1, b.max() + 1)
    table = np.zeros(shape, dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def cluster_accuracy(pred, true) -> float:
    """Best one-to-one matching of clusters to classes (Hungarian), as a fraction of samples.

    With more clusters than classes only as many clusters as classes can be matched, the
    usual definition (so over-clustering lowers it).
    """
    pred, true = known_pairs(pred, true)
    table = contingency(pred, true)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(pred))


def compare(pred, true) -> dict:
    """All three scores and how many samples they count."""
    n = len(known_pairs(pred, true)[0])
    return {"nmi": nmi(pred, true), "ari": ari(pred, true), "acc": cluster_accuracy(pred, true), "n": n}
