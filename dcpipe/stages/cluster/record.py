"""What clusters.json reports besides the fit: cluster sizes and agreement with other labellings.

Both agreements are for watching only: NMI against the previous round's labels (stability,
samples matched by shard name and key) and NMI / ARI / accuracy against the store's
`true_label` (evaluation only; clustering never reads it).
"""

import numpy as np

from dcpipe.stages.common.labels import LabelsError, load_labels, read_index


def _metrics():
    """stages.metrics, imported only once scores are due: scipy.optimize adds ~47 MB to the
    process, which then lands after the k-means fit instead of under its peak."""
    from dcpipe.stages.common import metrics
    return metrics


def size_summary(sizes: np.ndarray) -> dict:
    """min / percentiles / max / mean and a histogram over power-of-two bins [2^i, 2^(i+1))."""
    top = int(sizes.max()) if len(sizes) else 0
    edges = [0, 1] + [2 ** i for i in range(1, max(top, 1).bit_length() + 1)]
    counts, _ = np.histogram(sizes, bins=edges)
    p10, median, p90 = np.percentile(sizes, [10, 50, 90]) if len(sizes) else (0, 0, 0)
    return {"min": int(sizes.min()) if len(sizes) else 0, "p10": float(p10), "median": float(median),
            "p90": float(p90), "max": top, "mean": float(sizes.mean()) if len(sizes) else 0.0,
            "empty": int((sizes == 0).sum()),
            "histogram": {"edges": edges, "counts": counts.tolist()}}


def true_label_scores(labels: np.ndarray, true: np.ndarray | None) -> dict:
    """nmi_true / ari_true / acc_true / n_true (None when the store carries no true labels)."""
    counts = _metrics().PairCounts.of(labels, true) if true is not None else None
    if counts is None or counts.n == 0:
        return {"nmi_true": None, "ari_true": None, "acc_true": None, "n_true": 0}
    return {"nmi_true": counts.nmi(), "ari_true": counts.ari(), "acc_true": counts.accuracy(),
            "n_true": counts.n}


class PreviousRound:
    """Collects (this round, previous round) label pairs shard by shard, matched by key."""

    def __init__(self, prev_labels_dir):
        self.dir = prev_labels_dir
        try:
            self.shards = {s["name"] for s in read_index(prev_labels_dir)["shards"]} if prev_labels_dir else set()
        except LabelsError:
            self.dir, self.shards = None, set()
        self.pairs = _metrics().PairCounts()

    def add(self, name: str, keys: list[str], labels: np.ndarray) -> None:
        if name not in self.shards:
            return
        prev_keys, prev_labels = load_labels(self.dir, name)
        position = dict(zip(prev_keys, range(len(prev_keys))))
        at = np.array([position.get(key, -1) for key in keys], dtype=np.int64)
        self.pairs.add(labels[at >= 0], prev_labels[at[at >= 0]])

    def scores(self) -> dict:
        matched = self.pairs.n
        return {"nmi_prev": self.pairs.nmi() if matched else None, "n_prev_matched": matched,
                "prev_labels_dir": str(self.dir) if self.dir else None}
