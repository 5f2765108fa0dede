"""`dcpipe status`: what a workspace holds and how far each round got.

The JSON form is an interface for scripts and cron wrappers; its keys are documented in the
README ("dcpipe status --json") and only ever extended, never renamed.
"""

from collections import Counter
from importlib.metadata import PackageNotFoundError, version

from dcpipe.pipeline.workspace import STEPS, RoundDir, Workspace, WorkspaceError
from dcpipe.shards.atomic import read_json
from dcpipe.shards.manifest import load_manifest
from dcpipe.shards.reader import foreign_tars

CLUSTER_KEYS = ("k", "method", "seed", "n_samples", "nmi_prev", "nmi_true", "ari_true", "acc_true",
                "sizes", "empty_before_fix", "seconds")
TRAIN_KEYS = ("steps", "samples", "final_loss", "resumed_from_step")
try:
    VERSION = version("dcpipe")
except PackageNotFoundError:  # imported from a source tree that was never installed
    VERSION = "unknown"


def _shards_summary(ws: Workspace) -> dict:
    entries = load_manifest(ws.shards_dir)["shards"]
    rejects = Counter()
    for entry in entries:
        rejects.update(entry.get("rejects", {}))
    return {"shards": len(entries), "rows": sum(e.get("rows", e["n_samples"]) for e in entries),
            "samples": sum(e["n_samples"] for e in entries), "rejected": sum(rejects.values()),
            "rejects_by_reason": dict(sorted(rejects.items())),
            "bytes": sum(e["bytes"] for e in entries),
            "foreign_tars": len(foreign_tars(ws.shards_dir))}


def _pick(record: dict | None, keys) -> dict | None:
    return None if record is None else {k: record[k] for k in keys if k in record}


def _train_summary(record: dict | None) -> dict | None:
    if record is None:
        return None
    timings = record.get("timings", {})
    return {**_pick(record, TRAIN_KEYS), "images_per_s": timings.get("images_per_s"),
            "seconds": timings.get("train_s_all_runs"),
            "method": record.get("config", {}).get("method", "deepcluster")}


def _round_summary(d: RoundDir) -> dict:
    return {"round": d.index,
            "steps": {step: d.done(step) for step in STEPS},
            "shards": len(read_json(d.shard_list, [])),
            "cluster": _pick(read_json(d.clusters_record), CLUSTER_KEYS),
            "train": _train_summary(read_json(d.train_record))}


def check_workspace(ws: Workspace) -> None:
    """Refuses a folder that is no workspace (none of dcpipe.toml, shards/, rounds/: a typo in
    -w, say) and a config that does not load, rather than report an empty workspace."""
    if not any(p.exists() for p in (ws.config_path, ws.shards_dir, ws.rounds_dir)):
        raise WorkspaceError(f"{ws.root} is not a dcpipe workspace (no dcpipe.toml, shards/ or "
                             "rounds/): pass -w DIR, or run `dcpipe init` there")
    ws.config()


def collect(ws: Workspace) -> dict:
    return {"version": VERSION, "workspace": str(ws.root),
            "config": str(ws.config_path) if ws.config_path.exists() else None,
            "collection": _shards_summary(ws),
            "rounds": [_round_summary(d) for d in ws.rounds()]}


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_text(status: dict) -> str:
    c = status["collection"]
    lines = [f"workspace  {status['workspace']}",
             f"shards     {c['shards']} ({c['bytes'] / 1e6:.1f} MB)",
             f"rows       {c['rows']}: {c['samples']} samples, {c['rejected']} rejected"]
    lines += [f"           {reason}: {n}" for reason, n in c["rejects_by_reason"].items()]
    if c["foreign_tars"]:
        lines.append(f"           {c['foreign_tars']} tars in shards/ that dcpipe did not write: "
                     "no round sees them (move them out and adopt them: docs/shard.md)")
    if status["rounds"]:
        lines.append("round  extract cluster train  k      nmi_true nmi_prev acc_true loss     "
                     "cluster_s train_s method")
    for rd in status["rounds"]:
        cl, tr = rd["cluster"] or {}, rd["train"] or {}
        marks = [("done" if rd["steps"][s] else "-").ljust(7) for s in STEPS]
        lines.append(f"{rd['round']:<6} {' '.join(marks)} {_fmt(cl.get('k')):<6} "
                     f"{_fmt(cl.get('nmi_true')):<8} {_fmt(cl.get('nmi_prev')):<8} "
                     f"{_fmt(cl.get('acc_true')):<8} {_fmt(tr.get('final_loss')):<8} "
                     f"{_seconds(cl.get('seconds')):<9} {_seconds(tr.get('seconds')):<7} "
                     f"{tr.get('method', '-')}")
    return "\n".join(lines)
