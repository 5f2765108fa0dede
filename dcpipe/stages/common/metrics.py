"""Agreement between two labellings: NMI, adjusted Rand index, clustering accuracy.

Labels are non-negative ints; -1 means "unknown" (an invalid row, a sample without a true
class, a sample absent from the other round) and such samples are left out of every score.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment

UNKNOWN = -1
BLOCK = 1 << 20  # samples turned into pair codes at once


class PairCounts:
    """How often each (a, b) label pair occurs among the samples labelled in both.

    Memory grows with the distinct pairs, never with the samples: labellings are added block by
    block as int64 codes (a << 32 | b), merged into sorted (code, count) arrays now and then, so a
    10M-row store is scored in O(k x classes) beside its label arrays. Every score comes from
    these counts.
    """

    MERGE_AT = 1 << 20  # pending codes merged into the counts once this many are waiting

    def __init__(self):
        self.codes = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    @classmethod
    def of(cls, a, b) -> "PairCounts":
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.ndim != 1:
            raise ValueError(f"labellings must be 1-d and of the same length, got {a.shape} and {b.shape}")
        counts = cls()
        for first in range(0, len(a), BLOCK):
            counts.add(a[first:first + BLOCK], b[first:first + BLOCK])
        return counts

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        keep = (a != UNKNOWN) & (b != UNKNOWN)
        self.pending.append((a[keep].astype(np.int64) << 32) | b[keep].astype(np.int64))
        self.n_pending += int(keep.sum())
        if self.n_pending >= self.MERGE_AT:
            self._merge()

    def _merge(self) -> None:
        if not self.pending:
            return
        codes = np.concatenate([self.codes, *self.pending])
        weights = np.concatenate([self.counts, np.ones(self.n_pending, np.int64)])
        self.codes, inverse = np.unique(codes, return_inverse=True)
        self.counts = np.bincount(inverse, weights=weights, minlength=len(self.codes)).astype(np.int64)
        self.pending, self.n_pending = [], 0

    @property
    def n(self) -> int:
        self._merge()
        return int(self.counts.sum())

    def _sides(self):
        """(index of a's value, index of b's value, count) per pair, and both sides' sizes."""
        if self.n == 0:
            raise ValueError("no sample is labelled in both labellings")
        a_at = np.unique(self.codes >> 32, return_inverse=True)[1]
        b_at = np.unique(self.codes & 0xFFFFFFFF, return_inverse=True)[1]
        return (a_at, b_at, self.counts, np.bincount(a_at, weights=self.counts),
                np.bincount(b_at, weights=self.counts))

    def nmi(self) -> float:
        """Normalised mutual information, arithmetic-mean normalisation (scikit-learn's default)."""
        a_at, b_at, c, a_sizes, b_sizes = self._sides()
        if len(a_sizes) == len(b_sizes) == 1:
            return 1.0  # nothing split on either side: the same partition
        n = float(c.sum())
        mi = float(np.sum(c / n * (np.log(c) + np.log(n) - np.log(a_sizes[a_at]) - np.log(b_sizes[b_at]))))
        entropy = [np.log(n) - float(np.sum(s / n * np.log(s))) for s in (a_sizes, b_sizes)]
        return float(max(mi, 0.0) / max(sum(entropy) / 2, np.finfo(float).eps))

    def ari(self) -> float:
        """Adjusted Rand index (1 for identical partitions, ~0 for independent ones), in exact
        integers up to the last division."""
        _, _, c, a_sizes, b_sizes = self._sides()
        pairs = [int(np.sum(x.astype(np.int64) * (x.astype(np.int64) - 1) // 2))
                 for x in (c, a_sizes, b_sizes)]
        both, in_a, in_b = pairs
        total = int(c.sum()) * (int(c.sum()) - 1) // 2
        denominator = (in_a + in_b) * total - 2 * in_a * in_b
        return 1.0 if denominator == 0 else 2 * (both * total - in_a * in_b) / denominator

    def accuracy(self) -> float:
        """Best one-to-one matching of a's clusters to b's classes (Hungarian), as a fraction of
        samples. With more clusters than classes only as many clusters as classes can be
        matched, the usual definition (so over-clustering lowers it)."""
        a_at, b_at, c, a_sizes, b_sizes = self._sides()
        table = np.zeros((len(a_sizes), len(b_sizes)), dtype=np.int64)
        table[a_at, b_at] = c
        rows, cols = linear_sum_assignment(table, maximize=True)
        return float(table[rows, cols].sum() / c.sum())


def nmi(a, b) -> float:
    return PairCounts.of(a, b).nmi()


def ari(a, b) -> float:
    return PairCounts.of(a, b).ari()


def cluster_accuracy(pred, true) -> float:
    return PairCounts.of(pred, true).accuracy()


def compare(pred, true) -> dict:
    """All three scores and how many samples they count."""
    counts = PairCounts.of(pred, true)
    return {"nmi": counts.nmi(), "ari": counts.ari(), "acc": counts.accuracy(), "n": counts.n}


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
