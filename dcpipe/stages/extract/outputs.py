"""What the extract stage leaves in a round directory, and whether it is done (no torch)."""
from pathlib import Path

from dcpipe.stages.common.featurestore import is_complete as store_is_complete

FEATURES = "features.zarr"


def is_complete(round_dir) -> bool:
    return store_is_complete(Path(round_dir) / FEATURES)


def has_outputs(round_dir) -> bool:
    return (Path(round_dir) / FEATURES).exists()
