"""Writing one WebDataset shard so that it is only ever seen complete.

Members are `<key>.jpg` and `<key>.json`. Headers are deterministic (fixed mtime, owner and
mode), so the same samples always give a byte-identical tar: a rerun after a crash can be
compared with an uninterrupted run by checksum. The format is POSIX pax: a member name that
fits USTAR's 100 bytes gets the same plain USTAR header as before, a longer one (keys of up to
128 characters) gets a pax extended header, which tar, Python's tarfile and webdataset read.
"""

import hashlib
import io
import json
import tarfile
from pathlib import Path

from dcpipe.shards.atomic import atomic_write_bytes, atomic_write_json, publish, temp_path
from dcpipe.shards.naming import is_valid_key, shard_name

MTIME = 0


class _HashingFile:
    """File wrapper that hashes what tarfile writes, so the checksum costs no second read."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)

    def tell(self):
        return self.size


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MTIME
    info.mode = 0o644
    info.uname = info.gname = ""
    return info


def sample_json(meta: dict) -> bytes:
    """A sample's JSON as UTF-8; text that is not valid Unicode (a file name's undecodable
    bytes, kept as lone surrogates) is written as JSON escapes, so the member stays valid."""
    try:
        return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(meta, sort_keys=True).encode()


class ShardWriter:
    """`add` samples, then `commit`; a writer that is never committed leaves only a temp file."""

    def __init__(self, shards_dir, index: int):
        self.dir = Path(shards_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index = index
        self.name = shard_name(index)
        self.path = self.dir / f"{self.name}.tar"
        self._tmp = temp_path(self.path, "partial")  # a killed run's is swept by the next
        self._file = open(self._tmp, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT)
        self._keys = set()

    def add(self, key: str, jpg: bytes, meta: dict) -> None:
        if not is_valid_key(key):
            raise ValueError(f"invalid sample key {key!r}")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in shard {self.name}")
        self._keys.add(key)
        meta_bytes = sample_json(meta)
        for ext, data in (("jpg", jpg), ("json", meta_bytes)):
            self._tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))

    @property
    def n_samples(self) -> int:
        return len(self._keys)

    def commit(self, stats: dict, rejects: list[dict] = (), entry_extra: dict | None = None) -> dict:
        """Publish the tar, then its rejects and stats; return the manifest entry to record.

        The caller records the entry in the manifest last: only then does the shard count.
        """
        self._tar.close()
        self._file.close()
        publish(self._tmp, self.path)
        entry = {
            "index": self.index,
            "name": self.name,
            "n_samples": self.n_samples,
            "bytes": self._hashing.size,
            "sha256": self._hashing.sha256.hexdigest(),
            **(entry_extra or {}),
        }
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects)
        atomic_write_bytes(self.dir / f"{self.name}.rejects.jsonl", lines.encode())
        atomic_write_json(self.dir / f"{self.name}.json", {**stats, **entry})
        return entry

    def abort(self) -> None:
        self._tar.close()
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and not self._file.closed:
            self.abort()
