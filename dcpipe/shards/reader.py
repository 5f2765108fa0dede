"""Reading a collection: which shards it has, and the samples of one shard in tar order.

Works on our own shards (listed by manifest.jsonl) and on WebDataset shards written by other
tools such as img2dataset (any `*.tar` in the folder, in sorted order, samples counted from the
tar headers). Row `i` of a shard is its `i`-th sample in tar order, everywhere in dcpipe.
"""

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from dcpipe.shards.manifest import load_manifest

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class ShardReadError(Exception):
    """A shard that cannot be read to its end (truncated or corrupt tar)."""


@dataclass(frozen=True)
class ShardInfo:
    index: int
    name: str
    path: Path
    n_samples: int
    classes: tuple = field(default=())


@dataclass
class Sample:
    key: str
    image: bytes | None
    meta: dict
    error: str | None = None


def list_shards(shards_dir) -> list[ShardInfo]:
    shards_dir = Path(shards_dir)
    entries = load_manifest(shards_dir)["shards"]
    if entries:
        return [
            ShardInfo(e["index"], e["name"], shards_dir / f"{e['name']}.tar", e["n_samples"],
                      tuple(e.get("classes", ())))
            for e in entries
        ]
    tars = sorted(p for p in shards_dir.glob("*.tar") if not p.name.startswith("."))
    return [ShardInfo(i, p.stem, p, count_samples(p)) for i, p in enumerate(tars)]


def _split_member(name: str) -> tuple[str, str]:
    """`dir/abc.seg.jpg` -> (`dir/abc`, `seg.jpg`): WebDataset's rule, the first dot of the base."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _members(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(key, ext, data) of each file member; a short member or a missing end marker is an error.

    tarfile treats a file cut at a header boundary as a normal end, so the end-of-archive
    blocks (two zero records) are checked explicitly.
    """
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    data = tar.extractfile(info).read()
                    if len(data) != info.size:
                        raise ShardReadError(f"{path}: member {info.name} is truncated")
                    yield (*_split_member(info.name), data)
            if path.stat().st_size < tar.offset + 2 * tarfile.BLOCKSIZE:
                raise ShardReadError(f"{path}: tar ends without its end-of-archive marker")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardReadError(f"{path}: {exc.__class__.__name__}: {exc}") from exc


def _sample(key: str, parts: dict[str, bytes]) -> Sample:
    image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
    error = None if image is not None else "no image member"
    meta = {}
    if "json" in parts:
        try:
            meta = json.loads(parts["json"])
        except ValueError as exc:
            error = f"bad json member: {exc}"
    return Sample(key, image, meta, error)


def iter_shard(path) -> Iterator[Sample]:
    """Samples of one shard in tar order; raises ShardReadError where the tar breaks off."""
    key, parts = None, {}
    for member_key, ext, data in _members(Path(path)):
        if member_key != key:
            if key is not None:
                yield _sample(key, parts)
            key, parts = member_key, {}
        parts[ext] = data
    if key is not None:
        yield _sample(key, parts)


def count_samples(path) -> int:
    """Samples in a tar, from its headers alone (WebDataset grouping, consecutive members)."""
    keys, last = 0, None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                key, _ = _split_member(info.name)
                if info.isfile() and key != last:
                    keys, last = keys + 1, key
    except (tarfile.TarError, OSError) as exc:
        raise ShardReadError(f"{path}: {exc}") from exc
    return keys
