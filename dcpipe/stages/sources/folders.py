"""Image folders (`root/<class>/<file>`) as rows, with a row order that survives growth and
mixes the classes.

A sorted listing would renumber rows when a file appears in the middle of it, which would
change the keys of shards already written. So the first run records the listing in a *listing
file* (one JSON-quoted relative path per line, in row order), and later runs append only the
files it does not hold yet: row i is line i of the listing, forever.

The files a run appends go in the order of a 16-byte hash of their paths, not sorted by name:
sorted, an ImageNet-style folder makes one-class shards, and training, which reads a few shards
at a time, would see batches of a few classes and a pass whose last part is one or two of them
(docs/benchmarks.md). Hash order is a fixed shuffle: the same folder lists the same way on every
machine. The new files are spilled to a scratch file while the walk runs (RAM holds under 50
bytes a file: hash, offset, the sort's index), then appended in hash order. Membership is
checked against the hashes of the listed paths (a sorted numpy array, 16 bytes a file: 20 MB
for ImageNet), not a set of path strings. Appends are fsynced; a line torn by a kill is cut off
before the next append. A sync killed while appending continues where it stopped with the same
order: the rest of a hash-sorted set is still sorted.

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
from array import array
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
    """Append the files of `root` the listing does not hold yet, in hash order (module
    docstring); return how many were added."""
    listing = Path(listing)
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.touch()
    _cut_torn_tail(listing)
    seen = np.sort(np.fromiter((_digest(r) for r in read_listing(listing)), dtype="S16"))
    spill = listing.with_name(listing.name + ".new")
    try:
        digests, offsets = _spill_new_files(root, seen, spill)
        with open(spill, "rb") as lines, open(listing, "ab") as out:
            for i in np.argsort(digests, kind="stable"):
                lines.seek(offsets[i])
                out.write(lines.readline())
            out.flush()
            os.fsync(out.fileno())
    finally:
        spill.unlink(missing_ok=True)
    return len(offsets)


def _spill_new_files(root, seen: np.ndarray, spill: Path) -> tuple[np.ndarray, array]:
    """Write the files of `root` that `seen` lacks to `spill`, one JSON line each, in walk
    order; return their hashes and the lines' offsets."""
    digests, offsets = bytearray(), array("Q")
    with open(spill, "wb") as f:
        for rel in walk_sorted(root):
            raw = _digest(rel)
            d = np.array(raw, dtype="S16")  # compared as numpy compares `seen`'s items
            i = np.searchsorted(seen, d)
            if i == len(seen) or seen[i] != d:
                digests += raw
                offsets.append(f.tell())
                f.write(json.dumps(rel).encode("ascii") + b"\n")  # json escapes all non-ASCII
    return np.frombuffer(bytes(digests), dtype="S16"), offsets


def folder_files(root, listing=None) -> Iterator[str]:
    """Relative paths of a folder in row order: its listing file when given, else sorted
    (reading a folder without sharding it, where order does not matter)."""
    return read_listing(listing) if listing is not None else walk_sorted(root)
