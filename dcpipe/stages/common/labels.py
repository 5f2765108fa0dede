"""The label shard index of a round (ARCHITECTURE.md "Labels"): write it whole, read it by key.

    labels/NNNNNN.npy        int32, one label per sample of the shard in tar order, -1 = none
    labels/NNNNNN.keys.json  the shard's keys in the same order
    labels/index.json        k, round, shard names and counts, each shard's files' sha256:
                             written last

Plain .npy and JSON, readable without dcpipe and loaded without pickle. A shard's two files are
checked against the index's sha256 whenever they are loaded (an index written before digests
loads unverified); the digest of index.json itself (`index_digest`) thus names one labelling
exactly, and a training checkpoint records it. The directory is built
as `.labels.partial/` and renamed to `labels/` when index.json is in it, so `labels/` is only
ever seen complete; a run killed midway leaves a partial directory the next run discards.
"""

import hashlib
import io
import json
import os
import shutil
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from dcpipe.errors import FileFormatError
from dcpipe.shards.atomic import atomic_write_bytes, fsync_dir
from dcpipe.shards.naming import is_valid_key
from dcpipe.stages.common.labelnames import FOLDER, INDEX
from dcpipe.stages.common.safeload import load_npy
FORMAT = 1
WRITERS = 8


class LabelsError(FileFormatError):
    """Labels missing, incomplete, damaged or not matching their keys."""


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def save_npy(path, array: np.ndarray) -> None:
    """np.save, atomically (temp name, fsync, rename)."""
    atomic_write_bytes(path, npy_bytes(array))


def _write_durably(path: Path, data: bytes) -> None:
    """Write and fsync; no temp name needed inside the not-yet-published partial directory."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_shard(folder: Path, name: str, keys: list, labels: np.ndarray) -> dict:
    _check_shard(name, keys, labels)
    npy, keys_json = npy_bytes(labels.astype(np.int32, copy=False)), json.dumps(keys).encode()
    _write_durably(folder / f"{name}.npy", npy)
    _write_durably(folder / f"{name}.keys.json", keys_json)
    return {"name": name, "count": len(keys), "labelled": int((labels >= 0).sum()),
            "sha256": {"npy": _sha256(npy), "keys": _sha256(keys_json)}}


def _write_shards(folder: Path, shards) -> list[dict]:
    """Write every shard with WRITERS threads, never holding more than 2 x WRITERS shards."""
    listed, pending = [], deque()
    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        for shard in shards:
            if len(pending) == 2 * WRITERS:
                listed.append(pending.popleft().result())
            pending.append(pool.submit(_write_shard, folder, *shard))
        listed += [f.result() for f in pending]
    return listed


def write_labels(out_dir, shards: Iterable[tuple[str, list[str], np.ndarray]], meta: dict,
                 folder: str = FOLDER) -> Path:
    """Publish out_dir/folder from (shard name, keys, int32 labels) triples; return its path.

    `meta` (k, round, method, seed, ...) goes into index.json with the shard list. Shard files
    are written by a few threads (the time goes into fsync, which releases the GIL).
    """
    out_dir = Path(out_dir)
    final, partial, old = (out_dir / folder, out_dir / f".{folder}.partial",
                           out_dir / f".{folder}.old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    listed = _write_shards(partial, shards)
    _write_durably(partial / INDEX, json.dumps(
        {**meta, "format": FORMAT, "shards": listed, "n_samples": sum(s["count"] for s in listed),
         "n_labelled": sum(s["labelled"] for s in listed)}, indent=1).encode())
    fsync_dir(partial)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    fsync_dir(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _check_shard(name: str, keys: list, labels: np.ndarray) -> None:
    if not is_valid_key(name):
        raise LabelsError(f"unsafe shard name {name!r}")
    if labels.ndim != 1 or len(labels) != len(keys):
        raise LabelsError(f"shard {name}: {len(keys)} keys but labels of shape {labels.shape}")


def read_index(labels_dir) -> dict:
    path = Path(labels_dir) / INDEX
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise LabelsError(f"no complete labels in {labels_dir} ({INDEX} missing)") from e


def index_digest(labels_dir) -> str:
    """sha256 of index.json: it lists every shard file's digest, so it names the labelling."""
    try:
        return _sha256((Path(labels_dir) / INDEX).read_bytes())
    except FileNotFoundError as e:
        raise LabelsError(f"no complete labels in {labels_dir} ({INDEX} missing)") from e


@lru_cache(maxsize=8)
def _recorded_digests(index_path: str, _identity: tuple) -> dict[str, dict]:
    """Shard name -> {"npy", "keys"} sha256 from an index (cached per version of the file)."""
    shards = json.loads(Path(index_path).read_text())["shards"]
    return {s["name"]: s["sha256"] for s in shards if "sha256" in s}


def _shard_digests(labels_dir: Path, shard_name: str) -> dict | None:
    index = labels_dir / INDEX
    try:
        stat = index.stat()
    except FileNotFoundError as e:
        raise LabelsError(f"no complete labels in {labels_dir} ({INDEX} missing)") from e
    identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return _recorded_digests(str(index), identity).get(shard_name)


def _read_checked(path: Path, digest: str | None) -> bytes:
    data = path.read_bytes()
    if digest is not None and _sha256(data) != digest:
        raise LabelsError(f"{path} does not match the sha256 its {INDEX} records: the labels are "
                          "damaged or were changed; cluster the round again")
    return data


def load_labels(labels_dir, shard_name: str) -> tuple[list[str], np.ndarray]:
    """(keys, int32 labels) of one shard, aligned: labels[i] belongs to keys[i]; both files
    checked against the digests index.json records."""
    if not is_valid_key(shard_name):
        raise LabelsError(f"unsafe shard name {shard_name!r}")
    labels_dir = Path(labels_dir)
    digests = _shard_digests(labels_dir, shard_name) or {}
    npy = _read_checked(labels_dir / f"{shard_name}.npy", digests.get("npy"))
    labels = load_npy(io.BytesIO(npy), name=labels_dir / f"{shard_name}.npy")
    keys = json.loads(_read_checked(labels_dir / f"{shard_name}.keys.json", digests.get("keys")))
    if labels.dtype != np.int32 or labels.ndim != 1 or len(labels) != len(keys):
        raise LabelsError(f"{labels_dir}/{shard_name}: {len(keys)} keys, labels {labels.dtype} {labels.shape}")
    return keys, labels


class LabelLookup:
    """label(shard, key) in O(1): a shard's key -> label dict is built on first use and the
    most recently used `cache_shards` of them are kept (memory stays bounded by shard size)."""

    def __init__(self, labels_dir, cache_shards: int = 16):
        self.labels_dir = Path(labels_dir)
        self.index = read_index(self.labels_dir)
        self.k = self.index["k"]
        self.cache_shards = cache_shards
        self._shards: OrderedDict[str, dict[str, int]] = OrderedDict()

    def shard(self, shard_name: str) -> dict[str, int]:
        table = self._shards.pop(shard_name, None)
        if table is None:
            keys, labels = load_labels(self.labels_dir, shard_name)
            table = dict(zip(keys, labels.tolist()))
        self._shards[shard_name] = table
        if len(self._shards) > self.cache_shards:
            self._shards.popitem(last=False)
        return table

    def label(self, shard_name: str, key: str) -> int:
        """The sample's label, -1 when it has none (failed extraction); KeyError if unknown."""
        return self.shard(shard_name)[key]


def label_lookup(labels_dir, cache_shards: int = 16) -> LabelLookup:
    return LabelLookup(labels_dir, cache_shards)


def verify_labels(labels_dir) -> list[str]:
    """What is damaged in a label index (every shard's files against index.json's digests)."""
    problems = []
    for shard in read_index(labels_dir)["shards"]:
        try:
            load_labels(labels_dir, shard["name"])
        except (LabelsError, OSError, ValueError) as exc:
            problems.append(str(exc))
    return problems
