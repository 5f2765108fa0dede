"""What the cluster stage leaves in a round directory, and whether it is done (no torch)."""
from pathlib import Path

from dcpipe.stages.common.labels import FOLDER, INDEX

LABELS = FOLDER  # the label shard index (common/labels.py)
RECORD = "clusters.json"  # written last: the stage's commit
PCA = "pca.npz"
CENTROIDS = "centroids.npy"


def is_complete(round_dir) -> bool:
    d = Path(round_dir)
    return (d / LABELS / INDEX).exists() and (d / RECORD).exists()
