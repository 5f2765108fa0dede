"""Reading a collection: which shards it has, and the samples of one shard in tar order.

Works on our own shards (listed by manifest.jsonl) and on WebDataset shards written by other
tools such as img2dataset (any `*.tar` in the folder, in sorted order, samples counted from the
tar headers). Row `i` of a shard is its `i`-th sample in tar order, everywhere in dcpipe.

A sample's true label (for evaluation only) is read with the shard's label field: a member of
that extension (`<key>.cls`, WebDataset's class convention) or else that key of its JSON (a
dotted path reaches into nested objects: `meta.class`); our shards and img2dataset's extra
columns both use the JSON key `label`, the default. A label is text (`3` becomes "3").

A shard of ours is verified as it is read: the bytes are hashed on their way to the tar parser
(one pass, no second read) and, at the end of the tar, compared with the manifest's sha256. A
missing, short or altered tar of ours is then a `ShardCorrupt` (the user must restore or
re-shard it), never a few rows quietly lost. The check happens at the end of the tar, before
the shard's last sample is given out: a reader that has the last sample has a verified shard.
"""

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from dcpipe.errors import DcpipeError
from dcpipe.shards.manifest import load_manifest
from dcpipe.shards.naming import is_shard_name

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
HASH_BLOCK = 1 << 20
DEFAULT_LABEL_FIELD = "label"


class ShardReadError(Exception):
    """A shard that cannot be read to its end (truncated or corrupt tar)."""


class ShardCorrupt(DcpipeError):
    """A shard of ours that is missing, short or not the bytes its manifest entry records."""


@dataclass(frozen=True)
class ShardInfo:
    index: int
    name: str
    path: Path
    n_samples: int
    classes: tuple = field(default=())
    sha256: str | None = None  # recorded by the manifest (None: another tool's shard)
    bytes: int | None = None
    label_field: str = DEFAULT_LABEL_FIELD  # where its samples' true labels are (adopted shards)


@dataclass
class Sample:
    key: str
    image: bytes | None
    meta: dict
    error: str | None = None
    label: str | None = None  # true label (evaluation only), read with the shard's label field


def list_shards(shards_dir) -> list[ShardInfo]:
    shards_dir = Path(shards_dir)
    entries = load_manifest(shards_dir)["shards"]
    if entries:
        return [
            ShardInfo(e["index"], e["name"], shards_dir / f"{e['name']}.tar", e["n_samples"],
                      tuple(e.get("classes", ())), e.get("sha256"), e.get("bytes"),
                      e.get("label_field", DEFAULT_LABEL_FIELD))
            for e in entries
        ]
    return [ShardInfo(i, p.stem, p, count_samples(p)) for i, p in enumerate(tar_files(shards_dir))]


def tar_files(folder) -> list[Path]:
    """The `*.tar` files at the top of `folder`, sorted (hidden ones are temp files)."""
    return sorted(p for p in Path(folder).glob("*.tar") if not p.name.startswith("."))


def foreign_tars(shards_dir) -> list[Path]:
    """Tars in a shards folder that dcpipe did not name (copied in by hand): no round sees them
    once a manifest lists the collection (they must be adopted: docs/shard.md)."""
    return [p for p in tar_files(shards_dir) if not is_shard_name(p.stem)]


def _split_member(name: str) -> tuple[str, str]:
    """`dir/abc.seg.jpg` -> (`dir/abc`, `seg.jpg`): WebDataset's rule, the first dot of the base."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


class _HashingReader:
    """Read-only file wrapper that feeds every byte read through it to `hasher`. tarfile reads
    members in order and only ever seeks forward (past padding): a forward seek reads the bytes
    it skips, so the hash covers the whole tar exactly once."""

    def __init__(self, f, hasher):
        self._f = f
        self.sha256 = hasher
        self._pos = 0

    def read(self, size=-1):
        data = self._f.read(size)
        self.sha256.update(data)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or offset < self._pos:
            raise io.UnsupportedOperation("a hashed tar is read forward only")
        while self._pos < offset and self.read(min(HASH_BLOCK, offset - self._pos)):
            pass
        return self._pos

    def read_to_end(self) -> None:
        while self.read(HASH_BLOCK):
            pass


def _tar_members(path: Path, hasher=None) -> Iterator[tuple[str, str, bytes]]:
    """(key, ext, data) of each file member; a short member or a missing end marker is an error.
    With `hasher`, every byte of the file goes through it (the rest of the file too, after the
    last member), in the same single read.

    tarfile treats a file cut at a header boundary as a normal end, so the end-of-archive
    blocks (two zero records) are checked explicitly.
    """
    try:
        with open(path, "rb") as f:
            source = f if hasher is None else _HashingReader(f, hasher)
            with tarfile.open(fileobj=source, mode="r:") as tar:
                for info in tar:
                    if info.isfile():
                        data = tar.extractfile(info).read()
                        if len(data) != info.size:
                            raise ShardReadError(f"{path}: member {info.name} is truncated")
                        yield (*_split_member(info.name), data)
                if path.stat().st_size < tar.offset + 2 * tarfile.BLOCKSIZE:
                    raise ShardReadError(f"{path}: tar ends without its end-of-archive marker")
            if hasher is not None:
                source.read_to_end()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardReadError(f"{path}: {exc.__class__.__name__}: {exc}") from exc


def _members(path: Path, sha256: str | None = None) -> Iterator[tuple[str, str, bytes]]:
    """`_tar_members`, and with `sha256`, a tar whose bytes hash otherwise is an error (checked
    after the last member)."""
    hasher = None if sha256 is None else hashlib.sha256()
    yield from _tar_members(path, hasher)
    if hasher is not None and hasher.hexdigest() != sha256:
        raise ShardCorrupt(f"shard {path}: its bytes do not match the sha256 its manifest entry "
                           "records (the tar was altered or damaged on disk): restore it from a "
                           "copy, or delete it and its manifest line and shard its rows again")


def label_text(value) -> str | None:
    """A label value as the text dcpipe compares: strings as they are, integers as digits."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace").strip()
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value) if value != "" else None


def _json_label(meta: dict, label_field: str):
    value = meta
    for part in label_field.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _sample(key: str, parts: dict[str, bytes], label_field: str) -> Sample:
    image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
    error = None if image is not None else "no image member"
    meta = {}
    if "json" in parts:
        try:
            meta = json.loads(parts["json"])
        except ValueError as exc:
            error = f"bad json member: {exc}"
    label = parts[label_field] if label_field in parts else _json_label(meta, label_field)
    return Sample(key, image, meta, error, label_text(label))


def iter_shard(path, sha256: str | None = None,
               label_field: str = DEFAULT_LABEL_FIELD) -> Iterator[Sample]:
    """Samples of one shard in tar order; raises ShardReadError where the tar breaks off.

    With `sha256` (a shard of ours: `ShardInfo.sha256`) the tar is verified as it is read and
    any damage, a missing file or a short tar included, raises ShardCorrupt instead.
    `label_field`: where each sample's true label is (`ShardInfo.label_field`).
    """
    try:
        yield from _grouped(_members(Path(path), sha256), label_field)
    except ShardReadError as exc:
        if sha256 is None:
            raise
        raise ShardCorrupt(f"shard {path} is missing or damaged ({exc}): restore it from a "
                           "copy, or delete it and its manifest line and shard its rows again"
                           ) from exc


def _grouped(members, label_field: str) -> Iterator[Sample]:
    """Consecutive members with one key make a sample (WebDataset's grouping)."""
    key, parts = None, {}
    for member_key, ext, data in members:
        if member_key != key:
            if key is not None:
                yield _sample(key, parts, label_field)
            key, parts = member_key, {}
        parts[ext] = data
    if key is not None:
        yield _sample(key, parts, label_field)


@dataclass(frozen=True)
class TarSummary:
    n_samples: int
    bytes: int
    sha256: str
    classes: tuple  # the distinct true labels, sorted


def summarize_tar(path, label_field: str = DEFAULT_LABEL_FIELD) -> TarSummary:
    """Count, digest and labels of a tar (another tool's, being adopted), in one read;
    ShardReadError if it cannot be read to its end."""
    path, hasher = Path(path), hashlib.sha256()
    n_samples, classes = 0, set()
    for sample in _grouped(_tar_members(path, hasher), label_field):
        n_samples += 1
        if sample.label is not None:
            classes.add(sample.label)
    return TarSummary(n_samples, path.stat().st_size, hasher.hexdigest(), tuple(sorted(classes)))


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


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def missing_or_short(shards: list[ShardInfo]) -> list[str]:
    """What is wrong with the files of `shards` that a stat can tell (no reading)."""
    problems = []
    for shard in shards:
        try:
            size = shard.path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{shard.path} is missing")
            continue
        if shard.bytes is not None and size != shard.bytes:
            problems.append(f"{shard.path} has {size} bytes, its manifest entry {shard.bytes}")
    return problems


def verify_shard(shard: ShardInfo) -> str | None:
    """What is wrong with a shard's tar (missing, short, other bytes), or None; reads it whole."""
    problems = missing_or_short([shard])
    if problems:
        return problems[0]
    if shard.sha256 is not None and file_sha256(shard.path) != shard.sha256:
        return f"{shard.path}: sha256 differs from its manifest entry (altered or damaged)"
    return None
