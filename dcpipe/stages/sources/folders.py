"""Image folders (`root/<class>/<file>`) as rows, with a row order that survives growth.

A sorted listing would renumber rows when a file appears in the middle of it, which would
change the keys of shards already written. So the first run records the sorted listing in a
*listing file* (one JSON-quoted relative path per line, in row order), and later runs append
only the files it does not hold yet, in sorted order: row i is line i of the listing, forever.
Membership is checked against 16-byte hashes of the listed paths (a sorted numpy array, 16
bytes a file: 20 MB for ImageNet), not a set of path strings. Appends are fsynced; a line torn
by a kill is cut off before the next append, so a killed sync simply continues.

Hidden files and folders (name starting with '.') are skipped; symlinked folders are not
followed (no loops). The class is the first path component; files directly under the root have
no class. What the walk cannot enter is listed too, so it becomes a row and that row's reject
instead of stopping the walk: a sub-folder it cannot list as `rel/` (an `unreadable_folder`
row, also logged with the error; its files become new rows once it is readable) and an entry
it cannot stat, such as a symlink loop, or a symlink whose target is gone, as a file (its read
fails with the reason).
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)
TAIL_PROBE = 1 << 16


def walk_sorted(root, prefix="") -> Iterator[str]:
    """Relative POSIX paths of the regular files under `root`, in sorted order, streaming,
    and of what cannot be entered (see the module docstring). The root itself must be
    readable (OSError otherwise)."""
    try:
        with os.scandir(root) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        if not prefix:
            raise
        log.warning(json.dumps({"event": "unreadable_folder", "path": str(root),
                                "error": str(exc)}))
        yield prefix
        return
    for entry in entries:
        rel = f"{prefix}{entry.name}"
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            is_file = not is_dir and entry.is_file()
        except OSError:  # a symlink loop: listed, so that reading it becomes the row's reject
            yield rel
            continue
        if is_dir:
            yield from walk_sorted(entry.path, rel + "/")
        elif is_file or _dangling(entry):
            yield rel


def _dangling(entry: os.DirEntry) -> bool:
    """A symlink to nothing: a file the collection lost, so it becomes a rejected row."""
    return entry.is_symlink() and not os.path.exists(entry.path)


def _digest(rel: str) -> bytes:
    return hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def read_listing(listing) -> Iterator[str]:
    """The relative paths of a listing file in row order (a torn last line is not a row)."""
    with open(listing, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                yield json.loads(line)


def _cut_torn_tail(listing: Path) -> None:
    with open(listing, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - TAIL_PROBE)
        f.seek(start)
        tail = f.read()
        if tail and not tail.endswith(b"\n"):
            f.truncate(start + tail.rfind(b"\n") + 1)


def sync_listing(root, listing) -> int:
    """Append the files of `root` the listing does not hold yet; return how many were added."""
    listing = Path(listing)
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.touch()
    _cut_torn_tail(listing)
    seen = np.sort(np.fromiter((_digest(r) for r in read_listing(listing)), dtype="S16"))
    added = 0
    with open(listing, "a", encoding="utf-8", errors="surrogateescape") as f:
        for rel in walk_sorted(root):
            d = np.array(_digest(rel), dtype="S16")
            i = np.searchsorted(seen, d)
            if i == len(seen) or seen[i] != d:
                f.write(json.dumps(rel) + "\n")
                added += 1
        f.flush()
        os.fsync(f.fileno())
    return added


def folder_files(root, listing=None) -> Iterator[str]:
    """Relative paths of a folder in row order: its listing file when given, else sorted."""
    return read_listing(listing) if listing is not None else walk_sorted(root)
