"""The shard plan: which rows of which source go to which shard index, fixed before any work.

`plan.json` (via `dcpipe.shards.manifest.load_plan/save_plan`) maps each source (its resolved
path) to the options that shape its shards and a list of *runs*; run `{first_shard, row_start,
row_end, shard_size}` puts rows `[row_start + j*shard_size, ...)` into shard `first_shard + j`.
A run is added when a source has rows beyond the last run (the first run of a new source, or a
source that grew), always with shard indices after every index already planned in the folder.
Planned shards are never re-cut, so a killed run redone gives the same shards, and a grown
source only adds shards. A source that has fewer rows than already planned is an error: its
planned shards could no longer be rebuilt the same way.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from dcpipe.shards.manifest import load_plan, save_plan

from dcpipe.stages.sources.tables import SourceError

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


def _next_index(plan: dict) -> int:
    ends = [run["first_shard"] + n_shards(run)
            for entry in plan["sources"].values() for run in entry["runs"]]
    return max(ends, default=0)


def n_shards(run: dict) -> int:
    return -(-(run["row_end"] - run["row_start"]) // run["shard_size"])


def _check_options(source_id: str, recorded: dict, options: dict) -> None:
    changed = {k: (recorded.get(k), options.get(k)) for k in SHAPING_OPTIONS
               if recorded.get(k) != options.get(k)}
    if changed:
        detail = ", ".join(f"{k}: planned {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise SourceError(f"{source_id} was sharded with other options ({detail}); rerun with "
                          "the planned options or write to another shards folder")


def extend_plan(shards_dir, source_id: str, options: dict, n_rows: int,
                first_free: int = 0) -> dict:
    """Record a run for rows not yet planned (if any); return the source's plan entry.

    `first_free`: no new shard gets a lower index (the manifest's shards are kept even if
    plan.json was lost).
    """
    plan = load_plan(shards_dir)
    entry = plan["sources"].get(source_id)
    if entry is None:
        entry = {"options": options, "runs": []}
    _check_options(source_id, entry["options"], options)
    covered = entry["runs"][-1]["row_end"] if entry["runs"] else 0
    if n_rows < covered:
        raise SourceError(f"{source_id} has {n_rows} rows but {covered} are already planned; "
                          "a source may only grow (append rows)")
    if n_rows > covered:
        entry["runs"].append({"first_shard": max(_next_index(plan), first_free),
                              "row_start": covered,
                              "row_end": n_rows, "shard_size": options["shard_size"]})
        plan["sources"][source_id] = entry
        save_plan(shards_dir, plan)
    return entry


def planned_shards(entry: dict) -> list[PlannedShard]:
    shards = []
    for run in entry["runs"]:
        for j in range(n_shards(run)):
            start = run["row_start"] + j * run["shard_size"]
            shards.append(PlannedShard(run["first_shard"] + j, start,
                                       min(start + run["shard_size"], run["row_end"])))
    return shards
