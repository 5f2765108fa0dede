"""What the cluster stage leaves in a round directory, and whether it is done (no torch)."""
from pathlib import Path

from dcpipe.stages.common.labelnames import FOLDER, INDEX

LABELS = FOLDER  # the label shard index of head 0 (common/labels.py)
RECORD = "clusters.json"  # written last: the stage's commit
PCA = "pca.npz"
CENTROIDS = "centroids.npy"  # head 0's


def labels_folder(head: int) -> str:
    """Head h's label index: labels/ for head 0 (what v1, status and report read), labels.h/."""
    return LABELS if head == 0 else f"{LABELS}.{head}"


def centroids_file(head: int) -> str:
    return CENTROIDS if head == 0 else f"centroids.{head}.npy"


def is_complete(round_dir) -> bool:
    d = Path(round_dir)
    return (d / LABELS / INDEX).exists() and (d / RECORD).exists()


def has_outputs(round_dir) -> bool:
    d = Path(round_dir)
    return (d / LABELS).exists() or (d / RECORD).exists()
