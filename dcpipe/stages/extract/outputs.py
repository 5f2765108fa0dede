"""What the extract stage leaves in a round directory, and whether it is done (no torch)."""
from pathlib import Path

from dcpipe.shards.atomic import read_json

FEATURES = "features.zarr"


def is_complete(round_dir) -> bool:
    """Whether the store holds every shard's rows: its `complete` attribute, read as JSON
    (`dcpipe status` and a cron run with nothing to do import neither zarr nor numpy)."""
    meta = read_json(Path(round_dir) / FEATURES / "zarr.json", {})
    return bool(meta.get("attributes", {}).get("complete"))


def has_outputs(round_dir) -> bool:
    return (Path(round_dir) / FEATURES).exists()
