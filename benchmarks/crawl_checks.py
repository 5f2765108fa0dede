"""What the crawl benchmark checks in a shards folder, from the files alone (not from what the
command printed): every row accounted once, the tars' digests (to compare two runs), disk use.
`check_workspace` keeps them in WS/checks.json, so that a later piece of a full-scale run can
compare against a workspace whose tars were deleted to save disk."""

import hashlib
import json
import tarfile
from pathlib import Path

MANIFEST = "manifest.jsonl"


def manifest_entries(shards_dir: Path) -> list[dict]:
    """The complete lines of manifest.jsonl, the last entry of each shard winning."""
    path = shards_dir / MANIFEST
    data = path.read_bytes() if path.exists() else b""
    entries = {}
    for line in data[:data.rfind(b"\n") + 1].splitlines():
        entry = json.loads(line)
        entries[entry["index"]] = entry
    return [entries[i] for i in sorted(entries)]


def _sample_rows(tar: Path, row_start: int) -> list[int]:
    """Source rows of a tar's samples: keys are shard index + row within the shard."""
    with tarfile.open(tar) as f:
        return [row_start + int(m.name.split(".")[0][-6:]) for m in f if m.name.endswith(".jpg")]


def _reject_rows(path: Path) -> list[int]:
    with open(path) as f:
        return [json.loads(line)["row"] for line in f]


def accounting(shards_dir: Path, rows: int) -> dict:
    """Samples in the tars and reject records, each mapped back to its row: `once` is true when
    every row 0..rows-1 is exactly one of them, and the manifest's counts agree."""
    seen = bytearray(rows)
    samples = rejected = 0
    entries = manifest_entries(shards_dir)
    for e in entries:
        in_tar = _sample_rows(shards_dir / f"{e['name']}.tar", e["row_start"])
        in_rejects = _reject_rows(shards_dir / f"{e['name']}.rejects.jsonl")
        assert len(in_tar) == e["written"] and len(in_rejects) == e["rejected"], e["name"]
        samples, rejected = samples + len(in_tar), rejected + len(in_rejects)
        for row in in_tar + in_rejects:
            seen[row] += 1
    return {"shards": len(entries), "samples": samples, "rejected": rejected,
            "manifest_rows": sum(e["rows"] for e in entries),
            "once": seen.count(1) == rows}


def tar_digests(shards_dir: Path) -> dict:
    def sha256(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    return {p.name: sha256(p) for p in sorted(shards_dir.glob("[0-9]*.tar"))}


def disk_bytes(shards_dir: Path) -> dict:
    """Bytes of the tars and of everything else in the folder (stats, rejects, manifest, plan)."""
    files = [p for p in shards_dir.rglob("*") if p.is_file()]
    tars = sum(p.stat().st_size for p in files if p.suffix == ".tar")
    return {"tars": tars, "other": sum(p.stat().st_size for p in files) - tars}


def check_workspace(ws: Path, rows: int) -> dict:
    shards = ws / "shards"
    checks = {"accounting": accounting(shards, rows), "disk": disk_bytes(shards),
              "digests": tar_digests(shards)}
    (ws / "checks.json").write_text(json.dumps(checks))
    return checks


def saved_checks(ws: Path) -> dict | None:
    path = ws / "checks.json"
    return json.loads(path.read_text()) if path.exists() else None
