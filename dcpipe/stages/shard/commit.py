"""The main-process side of one shard: final decisions (duplicates), the tar, stats and rejects.

Order of a commit: duplicate decisions -> hashes into the dedup index -> tar published (temp
name, fsync, rename) -> rejects and stats JSON -> caller adds the manifest entry. A shard whose
stats JSON exists was published whole, so a run killed before its manifest entry *adopts* it
(`adopt_committed`) instead of redoing it.
"""

from collections import Counter
from pathlib import Path

from dcpipe.shards.atomic import read_json
from dcpipe.shards.naming import shard_name
from dcpipe.shards.reader import file_sha256
from dcpipe.shards.writer import ShardWriter

from dcpipe.stages.shard.plan import PlannedShard
from dcpipe.stages.shard.worker import Outcome, ShardResult

# Fields of the stats JSON that also go into the manifest entry.
ENTRY_FIELDS = ("index", "name", "n_samples", "bytes", "sha256", "source", "row_start",
                "row_end", "rows", "written", "rejected", "rejects", "classes")


def _reject(o: Outcome, reason: str, detail: str) -> None:
    o.reason, o.detail, o.jpeg = reason, detail, None


def mark_duplicates(index: int, outcomes: list[Outcome], dedup=None) -> list[tuple[str, int]]:
    """Turn repeated keys (and, with `dedup`, repeated content) into rejects, in row order.

    Returns [(sha256, row)] of the samples that stay, for the dedup index.
    """
    keys, first_row, kept = set(), {}, []
    for o in outcomes:
        if o.reason is not None:
            continue
        if o.key in keys:
            _reject(o, "duplicate_key", f"key {o.key} repeats in shard {index}")
            continue
        digest = o.meta["sha256"]
        if dedup is not None:
            earlier = dedup.in_earlier_shard(digest, index) or (
                (index, first_row[digest]) if digest in first_row else None)
            if earlier is not None:
                _reject(o, "duplicate", f"same content as shard {earlier[0]} row {earlier[1]}")
                continue
            first_row[digest] = o.row
        keys.add(o.key)
        kept.append((digest, o.row))
    return kept


def reject_record(o: Outcome) -> dict:
    record = {"row": o.row, "source": o.source, "reason": o.reason, "detail": o.detail}
    if o.key is not None:
        record["key"] = o.key
    if o.attempts is not None:
        record["attempts"] = o.attempts
    return record


def write_shard(shards_dir, planned: PlannedShard, result: ShardResult, context: dict) -> dict:
    """Publish the shard and its stats; return the manifest entry (not yet recorded)."""
    outcomes = result.outcomes
    reasons = Counter(o.reason for o in outcomes if o.reason is not None)
    written = [o for o in outcomes if o.reason is None]
    summary = {
        "source": context["source"], "row_start": planned.row_start, "row_end": planned.row_end,
        "rows": len(outcomes), "written": len(written), "rejected": sum(reasons.values()),
        "rejects": dict(sorted(reasons.items())),
        "classes": sorted({o.meta["label"] for o in written if "label" in o.meta}),
    }
    with ShardWriter(shards_dir, planned.index) as writer:
        for o in written:
            writer.add(o.key, o.jpeg, o.meta)
        stats = {**context, "timings": result.timings}
        return writer.commit(stats, [reject_record(o) for o in outcomes if o.reason], summary)


def adopt_committed(shards_dir, planned: PlannedShard, source: str) -> dict | None:
    """The manifest entry of a shard published by a run killed before recording it, if any:
    only a tar whose bytes hash to its stats' sha256 is adopted (any other is made again)."""
    name = shard_name(planned.index)
    stats = read_json(Path(shards_dir) / f"{name}.json")
    tar = Path(shards_dir) / f"{name}.tar"
    if (stats is None or not tar.exists() or stats.get("source") != source
            or (stats.get("row_start"), stats.get("row_end")) != (planned.row_start,
                                                                  planned.row_end)
            or stats.get("bytes") != tar.stat().st_size
            or stats.get("sha256") != file_sha256(tar)):
        return None
    return {k: stats[k] for k in ENTRY_FIELDS if k in stats}
