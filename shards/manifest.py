"""The collection manifest: one entry per complete shard, and the shard plan.

`manifest.json` is the source of truth for which shards exist: a tar without an entry is debris
from a killed run. Only one process (the shard stage's main process) writes it.
"""

from pathlib import Path

from .atomic import atomic_write_json, read_json

MANIFEST = "manifest.json"
PLAN = "plan.json"


def load_manifest(shards_dir) -> dict:
    return read_json(Path(shards_dir) / MANIFEST, {"version": 1, "shards": []})


def add_entry(shards_dir, entry: dict) -> dict:
    """Record a complete shard (replacing an entry with the same index) and return the manifest."""
    manifest = load_manifest(shards_dir)
    shards = [e for e in manifest["shards"] if e["index"] != entry["index"]] + [entry]
    manifest["shards"] = sorted(shards, key=lambda e: e["index"])
    atomic_write_json(Path(shards_dir) / MANIFEST, manifest)
    return manifest


def load_plan(shards_dir) -> dict:
    return read_json(Path(shards_dir) / PLAN, {"version": 1, "sources": {}})


def save_plan(shards_dir, plan: dict) -> None:
    atomic_write_json(Path(shards_dir) / PLAN, plan)
