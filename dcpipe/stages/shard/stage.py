"""The shard stage: any image source -> WebDataset shards, restartable and accountable.

    shard("yfcc.csv", "work/shards", ShardSettings(workers=2))

1. Plan (`plan.py`): the source's rows are counted and rows not yet planned are cut into
   shards of `shard_size` consecutive rows, recorded in plan.json before any work. A folder
   first appends its new files to its listing (`sources.folders`): rows of a folder are numbered
   by first appearance, so files added later only ever become new rows, never renumber old ones.
2. Work: planned shards that are in neither the manifest nor another node's share
   (`index % num_nodes == node_rank`) are processed whole by `workers` processes
   (`worker.process_shard`: fetch, check, decode, resize, encode), each working
   `shards_per_worker` shards at once (`distributor.py`) with `threads` downloads in flight
   for each; rows are decoded as their downloads finish, so a slow or dead server holds one
   thread, not the worker, and a shard waiting on its last rows does not hold the next.
3. Commit, in the main process and in shard order (`commit.py`): duplicate decisions,
   tar + rejects + stats JSON, then the manifest entry. Committing in order is what makes
   `dedup` deterministic under kill/rerun and any worker count.

Every row ends as one sample or one reject record with a reason; `written + rejected == rows`
per shard and in the returned totals. A rerun skips shards in the manifest, adopts shards that
were published but not yet recorded, redoes planned-but-missing ones with their planned rows,
and plans rows a grown source gained as new shards; existing shards are never rewritten.

A folder with `*.tar` files at its top is a WebDataset collection written by another tool
(img2dataset's): its tars are adopted whole (`adopt.py`), after every shard already planned.

Several nodes (`node_rank/num_nodes`, or RANK/WORLD_SIZE from torchrun) write disjoint shards
and leave manifest.jsonl alone (one writer only); a later run with one node records their shards.
They must start from the same source file. De-duplication needs the whole collection in one
place, so it requires `num_nodes == 1`.
"""

import json
import logging
import time
from collections import Counter
from pathlib import Path

from dcpipe.errors import SettingsError
from dcpipe.shards.manifest import add_entry, load_manifest
from dcpipe.stages.common import distributed
from dcpipe.stages.shard import adopt
from dcpipe.stages.shard.commit import adopt_committed, mark_duplicates, write_shard
from dcpipe.stages.shard.dedup import DedupIndex
from dcpipe.stages.shard.distributor import Distributor
from dcpipe.stages.shard.plan import PlannedShard, extend_plan, listing_path, planned_shards
from dcpipe.stages.shard.progress import Progress
from dcpipe.stages.shard.resizer import Limits
from dcpipe.stages.shard.settings import ShardSettings
from dcpipe.stages.shard.worker import FetchOptions, ShardTask
from dcpipe.stages.sources import folders
from dcpipe.stages.sources import tables as sources

log = logging.getLogger(__name__)
LOGGED = ("name", "rows", "written", "rejected", "rejects", "row_start", "row_end")


def resolve_nodes(node_rank=None, num_nodes=None) -> tuple[int, int]:
    """Explicit values win; else torchrun's RANK / WORLD_SIZE; else a single node."""
    rank = node_rank if node_rank is not None else distributed.rank()
    world = num_nodes if num_nodes is not None else distributed.world_size()
    if world < 1 or not 0 <= rank < world:
        raise SettingsError(f"--node-rank must be in [0, --num-nodes): got {rank} of {world}")
    return rank, world


def _tasks(rows, todo, limits, fetch_opts):
    """ShardTasks for the `todo` shards (sorted by row range), streaming the source once."""
    todo, bucket = iter(todo), []
    current = next(todo, None)
    for row in rows:
        while current is not None and row.row >= current.row_end:
            yield _task(current, bucket, limits, fetch_opts)
            current, bucket = next(todo, None), []
        if current is None:
            return
        if row.row >= current.row_start:
            bucket.append(row)
    if current is not None:
        yield _task(current, bucket, limits, fetch_opts)
    missing = next(todo, None)
    if missing is not None:
        raise sources.SourceError(f"the source changed while sharding: it ended before the "
                                  f"rows of shard {missing.index}")


def _task(planned, rows, limits, fetch_opts) -> ShardTask:
    if len(rows) != planned.row_end - planned.row_start:
        raise sources.SourceError(
            f"the source changed while sharding: shard {planned.index} expected rows "
            f"{planned.row_start}-{planned.row_end}, read {len(rows)}")
    return ShardTask(planned.index, planned.row_start, planned.row_end, rows, limits, fetch_opts)


def _prepare(src, shards_dir, read: dict, shaping: dict):
    """Sync a folder's listing, count rows and extend the plan; return the planned shards."""
    sid = sources.source_id(src)
    if read["format"] == "folder":
        read["listing"] = listing_path(shards_dir, sid)
        try:
            folders.sync_listing(src, read["listing"])
        except OSError as exc:  # the root folder itself (sub-folders become rejects)
            raise sources.SourceError(f"cannot read image folder {src}: {exc}") from exc
    recorded = [e["index"] for e in load_manifest(shards_dir)["shards"]]
    entry, n_rows = extend_plan(shards_dir, sid, shaping, sources.row_texts(src, **read),
                                max(recorded, default=-1) + 1,
                                source_file=None if read["format"] == "folder" else src)
    return sid, n_rows, planned_shards(entry)


def _done_shards(shards_dir, planned, sid: str, record: bool) -> set:
    """Indices already complete; published-but-unrecorded shards are adopted (and recorded)."""
    done = {e["index"] for e in load_manifest(shards_dir)["shards"]}
    for p in planned:
        if p.index not in done and (entry := adopt_committed(shards_dir, p, sid)) is not None:
            done.add(p.index)
            if record:
                add_entry(shards_dir, entry)
    return done


def shard(src, shards_dir, settings: ShardSettings = ShardSettings(), *, format=None,
          url_col=None, key_col=None, meta_cols=None, node_rank=None, num_nodes=None,
          progress=True) -> dict:
    """Shard `src` into `shards_dir`; return the totals of this run (see module docstring).

    `format` (else taken from the file), `url_col`, `key_col` and `meta_cols` say how to read
    the source; `node_rank` / `num_nodes` default to torchrun's RANK / WORLD_SIZE.
    """
    rank, world = resolve_nodes(node_rank, num_nodes)
    if settings.dedup and world > 1:
        raise SettingsError("dedup needs the whole collection on one node: use --num-nodes 1")
    image_size = settings.image_size
    started = time.perf_counter()
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    fmt = sources.detect_format(src, format)
    adopt.refuse_foreign_tars(shards_dir)
    if fmt == adopt.FORMAT:
        if world > 1:
            raise SettingsError("a WebDataset collection is adopted by one node: use num_nodes=1")
        return adopt.adopt(src, shards_dir, settings.label_field)
    read = {"format": fmt, "url_col": url_col, "key_col": key_col,
            "meta_cols": list(meta_cols) if meta_cols is not None else None}
    shaping = {**read, "image_size": image_size, "shard_size": settings.shard_size}
    with Distributor(settings.workers, settings.shards_per_worker) as dist:
        sid, n_rows, planned = _prepare(src, shards_dir, read, shaping)
        if n_rows == 0:  # not an error (a folder may fill later), but rarely what was meant
            log.warning("%s has no rows%s: nothing to shard", src,
                        " (no image files under it)" if fmt == "folder" else "")
        done = _done_shards(shards_dir, planned, sid, record=world == 1)
        todo = [p for p in planned if p.index % world == rank and p.index not in done]
        rows = sources.iter_rows(src, **read, start=todo[0].row_start if todo else 0)
        fetch_opts = FetchOptions(settings.timeout, settings.max_bytes, settings.threads,
                                  settings.public_only, settings.retries)
        tasks = _tasks(rows, todo, Limits(image_size=image_size), fetch_opts)
        context = {"source": sid, "format": fmt, "image_size": image_size}
        totals = _run(shards_dir, dist.results(tasks), todo, context,
                      dedup=DedupIndex(shards_dir) if settings.dedup else None,
                      record=world == 1, progress=progress)
    totals.update(source=sid, format=fmt, rows_in_source=n_rows, shards_planned=len(planned),
                  shards_skipped=len([p for p in planned if p.index in done]),
                  node_rank=rank, num_nodes=world,
                  duration_s=round(time.perf_counter() - started, 3))
    totals["images_per_s"] = round(totals["rows"] / max(totals["duration_s"], 1e-9), 2)
    return totals


def _run(shards_dir, results, todo, context, *, dedup, record, progress) -> dict:
    totals = {"shards_written": 0, "rows": 0, "written": 0, "rejected": 0}
    reasons, timings = Counter(), Counter()
    bar = Progress(sum(p.row_end - p.row_start for p in todo), enabled=progress)
    try:
        for task, result in results:
            kept = mark_duplicates(task.index, result.outcomes, dedup)
            if dedup is not None:
                dedup.record_shard(task.index, kept)
            planned = PlannedShard(task.index, task.row_start, task.row_end)
            entry = write_shard(shards_dir, planned, result, context)
            if record:
                add_entry(shards_dir, entry)
            log.info(json.dumps({"event": "shard_written", **{k: entry[k] for k in LOGGED}}))
            totals["shards_written"] += 1
            for k in ("rows", "written", "rejected"):
                totals[k] += entry[k]
            reasons.update(entry["rejects"])
            timings.update(result.timings)
            bar.update(entry["rows"], totals["written"], totals["rejected"])
    finally:
        bar.close()
        if dedup is not None:
            dedup.close()
    totals["rejects"] = dict(sorted(reasons.items()))
    totals["timings"] = {k: round(v, 3) for k, v in timings.items()}
    return totals
