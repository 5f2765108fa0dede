"""Inputs and read-back helpers for the shard stage tests."""

import csv
import hashlib
import json
from pathlib import Path

from support.imagefiles import bad_inputs, photo

from dcpipe.shards.manifest import load_manifest
from dcpipe.shards.reader import iter_shard


def write_csv(path: Path, rows: list[dict], mode="w") -> Path:
    fields = ["url", "key", "caption"]
    with open(path, mode, newline="") as f:
        writer = csv.DictWriter(f, fields)
        if mode == "w":
            writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in fields} for r in rows)
    return path


def serve_photos(server, n: int, prefix="p") -> list[str]:
    """URLs of `n` distinct photos served by `server`."""
    for i in range(n):
        server.files[f"{prefix}{i}.jpg"] = photo(160 + i, 120, seed=i)
    return [server.url(f"f/{prefix}{i}.jpg") for i in range(n)]


def hostile_rows(server, tmp_path: Path) -> list[tuple[dict, str]]:
    """(csv row, expected reject reason) for every kind of bad input, over HTTP and on disk."""
    cases = []
    for name, (data, reason) in bad_inputs().items():
        server.files[name] = data
        (tmp_path / name).write_bytes(data)
        cases += [({"url": server.url(f"f/{name}")}, reason),
                  ({"url": str(tmp_path / name)}, reason)]
    return cases + [
        ({"url": server.url("f/missing.jpg")}, "http_404"),
        ({"url": server.url("status/500")}, "http_500"),
        ({"url": server.url("slow")}, "timeout"),
        ({"url": server.url("reset")}, "connection_error"),
        ({"url": server.url("endless")}, "too_large"),
        ({"url": server.url("redirect?to=file:///etc/passwd")}, "bad_redirect"),
        ({"url": server.url("redirect?to=ftp://127.0.0.1/a.jpg")}, "bad_redirect"),
        ({"url": str(tmp_path / "nowhere.jpg")}, "not_found"),
        ({"url": ""}, "missing_source"),
        ({"url": server.url("f/p0.jpg"), "key": "../.."}, "bad_key"),
    ]


def collection(shards_dir) -> dict:
    """key -> (sha256 of the JPEG, sample JSON) over the manifest's shards."""
    out = {}
    for entry in load_manifest(shards_dir)["shards"]:
        for s in iter_shard(Path(shards_dir) / f"{entry['name']}.tar"):
            assert s.error is None and s.key not in out
            out[s.key] = (hashlib.sha256(s.image).hexdigest(), s.meta)
    return out


def rejects(shards_dir, folder=None) -> dict:
    """row -> reason over every shard's rejects file; with `folder` (a folder source), the
    path inside it -> reason, since a folder's row order is a hash's."""
    out = {}
    for path in sorted(Path(shards_dir).glob("*.rejects.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            where = record["source"].removeprefix(f"{folder}/") if folder else record["row"]
            out[where] = record["reason"]
    return out


def file_digests(shards_dir) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in Path(shards_dir).glob("[0-9]*.tar")}
