"""The collection manifest: one entry per complete shard, and the shard plan.

`manifest.jsonl` is the source of truth for which shards exist: a tar without an entry is
debris from a killed run. It is append-only, one JSON entry per line, so recording a shard
costs one small write however large the collection grows (rewriting a whole JSON file per
shard would be quadratic at YFCC100M's ~100k shards). A later line for the same index
replaces an earlier one. A run killed mid-append leaves a partial last line: readers skip it
and the next writer cuts it off. Only one process (the shard stage's main process) writes.
"""

import json
import os
from pathlib import Path

from dcpipe.errors import FileFormatError
from dcpipe.shards.atomic import atomic_write_json, read_json

MANIFEST = "manifest.jsonl"
REQUIRED = ("index", "name", "n_samples")  # what readers take from every entry
PLAN = "plan.json"


def has_manifest(shards_dir) -> bool:
    return (Path(shards_dir) / MANIFEST).exists()


def _complete_lines(data: bytes) -> list[bytes]:
    return data[: data.rfind(b"\n") + 1].splitlines()


def load_manifest(shards_dir) -> dict:
    """{"shards": [entries sorted by index]}, the last entry of each index winning."""
    try:
        data = (Path(shards_dir) / MANIFEST).read_bytes()
    except FileNotFoundError:
        data = b""
    entries = {}
    for number, line in enumerate(_complete_lines(data), 1):
        entry = _entry(line, Path(shards_dir) / MANIFEST, number)
        entries[entry["index"]] = entry
    return {"shards": [entries[i] for i in sorted(entries)]}


def _entry(line: bytes, path: Path, number: int) -> dict:
    """One complete line's entry; a damaged one (cut, or missing a key) stops with its place."""
    try:
        entry = json.loads(line)
    except ValueError as exc:
        raise FileFormatError(f"{path} line {number}: not a JSON entry ({exc}): restore the "
                              "file from a copy, or delete that line and shard again") from exc
    missing = [k for k in REQUIRED if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise FileFormatError(f"{path} line {number}: entry without {', '.join(missing)}: "
                              "restore the file from a copy, or delete that line and shard again")
    return entry


def _complete_length(f) -> int:
    """Bytes of `f` up to and including its last newline (scans back from the end only)."""
    end = f.seek(0, os.SEEK_END)
    pos = end
    while pos > 0:
        start = max(0, pos - 4096)
        f.seek(start)
        block = f.read(pos - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        pos = start
    return 0


def add_entry(shards_dir, entry: dict) -> None:
    """Record a complete shard (replacing any earlier entry with the same index), durably."""
    line = json.dumps(entry, sort_keys=True).encode() + b"\n"
    with open(Path(shards_dir) / MANIFEST, "ab+") as f:
        complete = _complete_length(f)
        if complete != f.seek(0, os.SEEK_END):  # a killed append left a partial line
            f.truncate(complete)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def load_plan(shards_dir) -> dict:
    return read_json(Path(shards_dir) / PLAN, {"version": 1, "sources": {}})


def save_plan(shards_dir, plan: dict) -> None:
    atomic_write_json(Path(shards_dir) / PLAN, plan)
