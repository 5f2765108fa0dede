"""The shard plan: which rows of which source go to which shard index, fixed before any work.

`plan.json` (via `dcpipe.shards.manifest.load_plan/save_plan`) maps each source (its resolved
path) to the options that shape its shards and a list of *runs*; run `{first_shard, row_start,
row_end, shard_size}` puts rows `[row_start + j*shard_size, ...)` into shard `first_shard + j`.
A run is added when a source has rows beyond the last run (the first run of a new source, or a
source that grew), always with shard indices after every index already planned in the folder.
Planned shards are never re-cut, so a killed run redone gives the same shards, and a grown
source only adds shards. A source that has fewer rows than already planned is an error: its
planned shards could no longer be rebuilt the same way.

Each run also records `digests`, one fingerprint per shard of the rows it was planned with
(blake2b of each row's text, see `sources.tables.row_texts`). Every run recomputes them in
the same pass that counts the rows: a source rewritten instead of appended (rows already
planned are taken as done by position) is an error naming the first shard whose rows changed.
A folder's rows are fingerprinted by each file's path inside the folder, so the same folder
named from another working directory is the same source. Plans of version 1 fingerprinted
them by the path as given on the command line: their folder digests are dropped once and
recomputed (the folder's listing file already fixes its row order).

Reading a whole list to find it unchanged is what a cron run with nothing to do would spend its
time on (seconds per million rows), so a source file's entry also records its `file` identity
after a full check: size, mtime and ctime (ns), inode, and a digest of its last MiB. While they
are all the same the rows are not read again: the file was not written since (any write moves
ctime, which no tool sets back), and the tail digest also catches a rewrite whose timestamps
were lost (a file system with coarse ones). Any difference, growth included, means a full check.
"""

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from dcpipe.shards.manifest import load_plan, save_plan

from dcpipe.stages.sources.tables import SourceError

PLAN_VERSION = 2  # 2: a folder's rows are fingerprinted by their path inside the folder

TAIL_BYTES = 1 << 20  # the file identity's digest covers this much of the end of the file

# Options that change what a shard holds: a rerun must use the same ones.
SHAPING_OPTIONS = ("format", "url_col", "key_col", "meta_cols", "image_size", "shard_size")


@dataclass(frozen=True)
class PlannedShard:
    index: int
    row_start: int
    row_end: int


def listing_path(shards_dir, source_id: str) -> Path:
    """Where a folder source keeps its row order (see `stages.folders`)."""
    digest = hashlib.sha256(source_id.encode()).hexdigest()[:16]
    return Path(shards_dir) / "sources" / f"{digest}.listing"


def next_index(plan: dict) -> int:
    ends = [run["first_shard"] + n_shards(run)
            for entry in plan["sources"].values() for run in entry["runs"]]
    return max(ends, default=0)


def n_shards(run: dict) -> int:
    return -(-(run["row_end"] - run["row_start"]) // run["shard_size"])


def _check_options(source_id: str, recorded: dict, options: dict) -> None:
    changed = {k: (recorded.get(k), options.get(k)) for k in SHAPING_OPTIONS
               if recorded.get(k) != options.get(k)}
    if changed:
        detail = ", ".join(f"--{k.replace('_', '-')}: planned {a!r}, now {b!r}"
                           for k, (a, b) in changed.items())
        raise SourceError(f"{source_id} was sharded with other options ({detail}); rerun with "
                          "the planned options or write to another shards folder")


def _shard_ends(planned: list[PlannedShard], covered: int, shard_size: int) -> Iterator[int]:
    """Where each shard's rows end: the planned shards', then every `shard_size` rows."""
    yield from (p.row_end for p in planned)
    end = covered
    while True:
        end += shard_size
        yield end


def _fingerprints(texts: Iterable[str], ends: Iterator[int]) -> tuple[int, list[str]]:
    """(rows, one digest per shard of the rows it holds); the last shard may be partial."""
    digests, n, start, end = [], 0, 0, next(ends)
    h = hashlib.blake2b(digest_size=16)
    for text in texts:
        if n == end:
            digests.append(h.hexdigest())
            h, start, end = hashlib.blake2b(digest_size=16), end, next(ends)
        data = text.encode("utf-8", "surrogateescape")
        h.update(len(data).to_bytes(8, "little") + data)
        n += 1
    if n > start:
        digests.append(h.hexdigest())
    return n, digests


def _check_unchanged(source_id: str, entry: dict, planned: list[PlannedShard], digests) -> None:
    """Compare the planned shards' rows with their recorded digests; record missing ones."""
    recorded = [d for run in entry["runs"] for d in run.get("digests", [None] * n_shards(run))]
    for p, was, now in zip(planned, recorded, digests):
        if was is not None and was != now:
            raise SourceError(
                f"{source_id} was rewritten: rows {p.row_start}-{p.row_end - 1} (shard {p.index})"
                " differ from when they were planned. A source may only grow by appending rows; "
                "shard a rewritten list into another shards folder")
    i = 0
    for run in entry["runs"]:  # plans written before digests existed get them now
        run.setdefault("digests", digests[i:i + n_shards(run)])
        i += n_shards(run)


def file_identity(path) -> dict | None:
    """What stays the same while a source file is not written (module docstring); None for a
    folder or anything else that is not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        f.seek(max(0, st.st_size - TAIL_BYTES))
        tail = hashlib.blake2b(f.read(TAIL_BYTES), digest_size=16).hexdigest()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino, "tail": tail}


def extend_plan(shards_dir, source_id: str, options: dict, texts: Iterable[str],
                first_free: int = 0, source_file=None) -> tuple[dict, int]:
    """Check the planned rows of `texts` (one per row) and plan those beyond; return the
    source's plan entry and its row count.

    `first_free`: no new shard gets a lower index (the manifest's shards are kept even if
    plan.json was lost). `source_file`: the file `texts` come from: while its identity is the
    one recorded after the last full check, its rows are not read (all are planned).
    """
    plan = _migrated(load_plan(shards_dir))
    recorded = plan["sources"].get(source_id)
    entry = copy.deepcopy(recorded) or {"options": options, "runs": []}
    _check_options(source_id, entry["options"], options)
    covered = entry["runs"][-1]["row_end"] if entry["runs"] else 0
    identity = file_identity(source_file) if source_file is not None else None
    fingerprinted = all("digests" in run for run in entry["runs"])
    if identity is not None and entry.get("file") == identity and fingerprinted:
        return entry, covered
    planned = planned_shards(entry)
    n_rows, digests = _fingerprints(texts, _shard_ends(planned, covered, options["shard_size"]))
    if n_rows < covered:
        raise SourceError(f"{source_id} has {n_rows} rows but {covered} are already planned; "
                          "a source may only grow (append rows)")
    _check_unchanged(source_id, entry, planned, digests)
    if n_rows > covered:
        entry["runs"].append({"first_shard": max(next_index(plan), first_free),
                              "row_start": covered, "row_end": n_rows,
                              "shard_size": options["shard_size"],
                              "digests": digests[len(planned):]})
    unchanged = identity is not None and file_identity(source_file) == identity  # while read
    entry["file"] = identity if unchanged else None
    if entry != recorded:
        plan["sources"][source_id] = entry
        save_plan(shards_dir, plan)
    return entry, n_rows


def _migrated(plan: dict) -> dict:
    """A plan of version 1 without its folder digests (see the module docstring)."""
    if plan.get("version", 1) < 2:
        for entry in plan["sources"].values():
            if entry["options"].get("format") == "folder":
                for run in entry["runs"]:
                    run.pop("digests", None)
    return {**plan, "version": PLAN_VERSION}


def planned_shards(entry: dict) -> list[PlannedShard]:
    shards = []
    for run in entry["runs"]:
        for j in range(n_shards(run)):
            start = run["row_start"] + j * run["shard_size"]
            shards.append(PlannedShard(run["first_shard"] + j, start,
                                       min(start + run["shard_size"], run["row_end"])))
    return shards
