"""Adopting a WebDataset collection written by another tool (img2dataset's, or any folder of
`*.tar` shards): its tars join the collection whole, without re-encoding a sample.

Each source tar, in sorted order, is read once (samples counted, bytes hashed, true labels
collected with `label_field`), then placed in the shards folder under the next free dcpipe
name (`NNNNNN.tar`: after every index the manifest records or the plan reserves, so neither a
later `dcpipe shard` nor a shard still being made is ever overwritten): hard-linked when the
folder is on the same file system (no copy, the bytes are shared), copied otherwise. Then its
stats JSON, then its manifest entry: `source` (the source tar's resolved path), n_samples,
bytes, sha256, classes, `label_field`, and rows = written = n_samples, rejected = 0 (the tool
that wrote the tar made its own decisions about what to keep). From then on it is a shard like
any other: verified against that sha256 whenever it is read, fixed in a round's shard list.

Adopting again is a no-op for the tars already recorded (by source path, and by digest for the
same bytes reached through another path), so a collection that grew only adds its new tars. A
recorded tar adopted with another `label_field` gets its entry rewritten (same index, same
bytes, the classes read with the new field). A killed adoption leaves at most one tar without
an entry, which the next run overwrites.
"""

import json
import logging
import os
import shutil
import time
from pathlib import Path

from dcpipe.shards.atomic import atomic_write_json, fsync_dir, temp_path
from dcpipe.shards.manifest import add_entry, load_manifest, load_plan
from dcpipe.shards.naming import shard_name
from dcpipe.shards.reader import (DEFAULT_LABEL_FIELD, ShardReadError, TarSummary,
                                  foreign_tars, summarize_tar, tar_files)

from dcpipe.stages.shard.plan import next_index
from dcpipe.stages.sources.tables import SourceError, source_id

log = logging.getLogger(__name__)
FORMAT = "webdataset"


def adopt(src, shards_dir, label_field: str) -> dict:
    """Adopt the tars of the folder `src` into `shards_dir`; return this run's totals."""
    started = time.perf_counter()
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    if Path(src).resolve() == shards_dir.resolve():
        raise SourceError(f"{src} is the workspace's shards folder: move the tars to adopt "
                          "into a folder of their own and pass that folder")
    tars = tar_files(src)
    if not tars:
        raise SourceError(f"{src} holds no *.tar files: not a WebDataset collection")
    recorded = load_manifest(shards_dir)["shards"]
    by_source = {e.get("source"): e for e in recorded}
    by_digest = {e.get("sha256"): e for e in recorded}
    index = max(next_index(load_plan(shards_dir)),
                max((e["index"] for e in recorded), default=-1) + 1)
    totals = {"shards_written": 0, "shards_relabelled": 0, "shards_skipped": 0, "linked": 0,
              "copied": 0, "rows": 0, "written": 0, "rejected": 0, "rejects": {}}
    for tar in tars:
        earlier = by_source.get(source_id(tar))
        if earlier is not None and earlier.get("label_field", DEFAULT_LABEL_FIELD) == label_field:
            totals["shards_skipped"] += 1
            continue
        summary = _summarize(tar, label_field)
        earlier = earlier or by_digest.get(summary.sha256)
        if earlier is not None:
            _relabel(shards_dir, earlier, summary, label_field, totals)
            continue
        how = _place(tar, shards_dir / f"{shard_name(index)}.tar")
        entry = _entry(index, tar, summary, label_field)
        atomic_write_json(shards_dir / f"{entry['name']}.json", {**entry, "format": FORMAT})
        add_entry(shards_dir, entry)
        log.info(json.dumps({"event": "shard_adopted", "name": entry["name"], "source": str(tar),
                             "n_samples": summary.n_samples, "how": how}))
        index += 1
        totals[how] += 1
        totals["shards_written"] += 1
        totals["rows"] += summary.n_samples
        totals["written"] += summary.n_samples
    totals.update(source=source_id(src), format=FORMAT, label_field=label_field,
                  shards_in_source=len(tars), duration_s=round(time.perf_counter() - started, 3))
    return totals


def _summarize(tar: Path, label_field: str) -> TarSummary:
    try:
        return summarize_tar(tar, label_field)
    except ShardReadError as exc:
        raise SourceError(f"cannot adopt {tar}: not a readable tar ({exc}); repair it or move it "
                          "out of the folder, then run the same command again") from exc


def _entry(index: int, tar: Path, summary: TarSummary, label_field: str) -> dict:
    return {"index": index, "name": shard_name(index), "n_samples": summary.n_samples,
            "bytes": summary.bytes, "sha256": summary.sha256, "source": source_id(tar),
            "row_start": 0, "row_end": summary.n_samples, "rows": summary.n_samples,
            "written": summary.n_samples, "rejected": 0, "rejects": {},
            "classes": list(summary.classes), "label_field": label_field}


def _relabel(shards_dir: Path, earlier: dict, summary: TarSummary, label_field: str,
             totals: dict) -> None:
    """A tar already recorded: nothing to do, unless it was adopted and its labels are now read
    with another field (a shard dcpipe wrote keeps its stats and entry)."""
    if ("label_field" not in earlier or earlier["label_field"] == label_field
            or earlier["sha256"] != summary.sha256):
        totals["shards_skipped"] += 1  # the same bytes again, or a recorded source since changed
        return
    entry = {**earlier, "classes": list(summary.classes), "label_field": label_field}
    atomic_write_json(shards_dir / f"{entry['name']}.json", {**entry, "format": FORMAT})
    add_entry(shards_dir, entry)
    totals["shards_relabelled"] += 1


def _place(tar: Path, target: Path) -> str:
    """Hard-link (same file system) or copy `tar` to `target`, durably; "linked" or "copied"."""
    tmp = temp_path(target, "partial")
    try:
        try:
            os.link(tar, tmp)
            how = "linked"
        except OSError:  # another file system, or links not allowed there
            shutil.copyfile(tar, tmp)
            how = "copied"
        fd = os.open(tmp, os.O_RDONLY)  # the source may be read-only to us
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return how


def refuse_foreign_tars(shards_dir) -> None:
    foreign = foreign_tars(shards_dir)
    if foreign:
        names = ", ".join(p.name for p in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise SourceError(
            f"{shards_dir} holds {len(foreign)} tars that dcpipe did not write ({names}); the "
            "manifest would hide them from every round. Move them to a folder of their own and "
            "adopt it: `dcpipe shard --src <that folder>`")
