"""What the extract stage leaves in a round directory, and whether it is done (no torch)."""
from pathlib import Path

from dcpipe.shards.atomic import read_json

FEATURES = "features.zarr"


def store_attrs(store) -> dict:
    """A feature store's attributes, read as JSON (`dcpipe status` and a cron run with nothing
    to do import neither zarr nor numpy); {} when there is no store."""
    return read_json(Path(store) / "zarr.json", {}).get("attributes", {})


def is_complete(round_dir) -> bool:
    """Whether the store holds every shard's rows: its `complete` attribute."""
    return bool(store_attrs(Path(round_dir) / FEATURES).get("complete"))


def has_outputs(round_dir) -> bool:
    return (Path(round_dir) / FEATURES).exists()
