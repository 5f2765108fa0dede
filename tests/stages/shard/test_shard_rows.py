"""Whatever one row holds, it ends as that row's sample or reject; only the source as a whole
stops the command (issue 13)."""

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import webdataset as wds
from support.cli import dcpipe
from support.imagefiles import photo
from support.imageserver import ImageServer
from support.settings import with_settings
from support.shard_data import collection, rejects, serve_photos, write_csv

from dcpipe.shards.manifest import load_manifest
from dcpipe.stages.shard import ShardSettings, worker
from dcpipe.stages.shard import shard as shard_stage
from dcpipe.stages.sources.tables import MAX_LINE_CHARS, SourceError

shard = with_settings(shard_stage, ShardSettings)
QUICK = {"progress": False, "timeout": 3.0, "max_bytes": 1 << 20, "workers": 1}


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        yield s


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    """One object a line, each with a `key` (empty: the default key); json.dumps escapes NUL
    and lone surrogates, which json.loads gives back."""
    path.write_text("".join(json.dumps({"key": "", **r}) + "\n" for r in rows))
    return path


def _reject_records(shards_dir) -> list[dict]:
    return [json.loads(line) for p in sorted(Path(shards_dir).glob("*.rejects.jsonl"))
            for line in p.read_text().splitlines()]


def _accounted(stats, shards_dir):
    manifest = load_manifest(shards_dir)["shards"]
    return (stats["written"] + stats["rejected"] == stats["rows"]
            and all(e["written"] + e["rejected"] == e["rows"] for e in manifest))


def test_rows_that_used_to_stop_the_run_are_rejects(server, tmp_path):
    urls = serve_photos(server, 3, prefix="r")
    rows = [
        {"url": urls[0]},
        {"url": "http://[::1/x.jpg"},  # unclosed IPv6 bracket
        {"url": f"http://{'a' * 64}.example.com/x.jpg"},  # host label over 63 characters
        {"url": f"{tmp_path}/x\0.jpg"},  # NUL byte in a path
        {"url": f"file://{tmp_path}/x%00.jpg"},  # ... and in a file:// URL
        {"url": "http://127.0.0.1/x\ud800.jpg"},  # a lone surrogate
        {"url": urls[1], "key": "k" * 110},  # keys longer than USTAR's 100-byte names
        {"url": urls[2], "key": "q" * 128},
    ]
    out = tmp_path / "shards"
    stats = shard(_write_jsonl(tmp_path / "list.jsonl", rows), out, key_col="key", **QUICK)
    assert rejects(out) == {1: "bad_url", 2: "bad_url", 3: "bad_path", 4: "bad_path",
                            5: "bad_encoding"}
    assert stats["written"] == 3 and _accounted(stats, out)
    tars = [str(p) for p in sorted(out.glob("*.tar"))]
    keys = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)]
    assert keys == ["000000000000", "k" * 110, "q" * 128]


def test_invalid_utf8_spoils_only_its_row_and_long_csv_fields_are_read(server, tmp_path):
    urls = serve_photos(server, 3, prefix="u")
    long_caption = "c" * 200_000  # the csv module's default field limit is 131,072
    src = tmp_path / "list.csv"
    src.write_bytes(f"url,caption\n{urls[0]},ok\n{urls[1]},caf\xe9\n".encode("latin-1")
                    + f"{urls[2]},{long_caption}\n".encode())
    out = tmp_path / "shards"
    stats = shard(src, out, **QUICK)
    assert rejects(out) == {1: "bad_encoding"} and stats["written"] == 2
    metas = sorted((m["row"], m["meta"]["caption"]) for _, m in collection(out).values())
    assert metas == [(0, "ok"), (2, long_caption)]


def test_an_over_long_line_is_a_small_reject(server, tmp_path):
    urls = serve_photos(server, 2, prefix="l")
    src = tmp_path / "list.txt.gz"
    with gzip.open(src, "wt") as f:
        f.write(f"{urls[0]}\n{'x' * (3 * MAX_LINE_CHARS)}\n{urls[1]}\n")
    out = tmp_path / "shards"
    stats = shard(src, out, **QUICK)
    assert rejects(out) == {1: "line_too_long"} and stats["written"] == 2
    assert f"{3 * MAX_LINE_CHARS} characters" in _reject_records(out)[0]["detail"]
    assert sum(p.stat().st_size for p in out.glob("*.rejects.jsonl")) < 1000


def test_an_unforeseen_error_of_one_row_is_its_reject(server, tmp_path, monkeypatch):
    urls = serve_photos(server, 2, prefix="e")

    def fetch_failing_on_the_second(source, **options):
        if source == urls[1]:
            raise RuntimeError("no check foresaw this")
        return real_fetch(source, **options)

    real_fetch = worker.fetch
    monkeypatch.setattr(worker, "fetch", fetch_failing_on_the_second)
    out = tmp_path / "shards"
    stats = shard(write_csv(tmp_path / "list.csv", [{"url": u} for u in urls]), out, **QUICK)
    [record] = _reject_records(out)
    assert (record["row"], record["reason"]) == (1, "unexpected_error")
    assert "RuntimeError('no check foresaw this')" in record["detail"]
    assert stats["written"] == 1 and _accounted(stats, out)


@contextlib.contextmanager
def _unprivileged():
    """Root reads any folder: drop to `nobody` so that a mode-000 folder is unreadable."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_folder_walk_records_what_it_cannot_enter_and_goes_on():
    work = Path(tempfile.mkdtemp(prefix="dcpipe-walk-"))  # not under root's private tmp
    try:
        os.chmod(work, 0o777)
        root = work / "photos"
        for i, rel in enumerate(["cat/a.jpg", "dog/b.jpg", "locked/c.jpg"]):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(photo(120, 100, i))
        (root / "cat" / "loop.jpg").symlink_to("loop.jpg")
        (root / "dog" / "gone.jpg").symlink_to(work / "moved-away.jpg")
        os.chmod(root / "locked", 0)
        out = work / "shards"
        with _unprivileged():
            stats = shard(root, out, shard_size=10, **QUICK)
        assert rejects(out, folder=root) == {"cat/loop.jpg": "read_error",
                                             "dog/gone.jpg": "not_found",
                                             "locked/": "unreadable_folder"}
        assert stats["written"] == 2 and _accounted(stats, out)
        os.chmod(root / "locked", 0o755)  # readable now: its file becomes a new row
        assert shard(root, out, shard_size=10, **QUICK)["written"] == 1
        rows = {m["source"]: m["row"] for _, m in collection(out).values()}
        assert rows["locked/c.jpg"] == 5 and sorted(rows) == ["cat/a.jpg", "dog/b.jpg",
                                                             "locked/c.jpg"]
    finally:
        shutil.rmtree(work)


def test_an_empty_source_warns_and_writes_nothing(tmp_path, caplog):
    (tmp_path / "photos" / "cat").mkdir(parents=True)  # a class folder, no files yet
    write_csv(tmp_path / "list.csv", [])
    for src in (tmp_path / "photos", tmp_path / "list.csv"):
        caplog.clear()
        stats = shard(src, tmp_path / f"shards-{src.stem}", **QUICK)
        assert stats["rows_in_source"] == 0 and stats["shards_written"] == 0
        assert f"{src} has no rows" in caplog.text


def test_rewritten_source_list_is_refused_appended_rows_are_sharded(server, tmp_path):
    urls = serve_photos(server, 7, prefix="w")
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in urls[:5]])
    out = tmp_path / "shards"
    shard(src, out, shard_size=2, **QUICK)
    write_csv(src, [{"url": u} for u in urls[5:]], mode="a")
    assert shard(src, out, shard_size=2, **QUICK)["shards_written"] == 1
    write_csv(src, [{"url": u} for u in urls[:2] + urls[3:4] + urls[2:3] + urls[4:]])
    with pytest.raises(SourceError, match=r"was rewritten: rows 2-3 \(shard 1\)"):
        shard(src, out, shard_size=2, **QUICK)


def test_public_only_flag_refuses_local_and_private_sources(server, tmp_path):
    [url] = serve_photos(server, 1, prefix="pub")
    local = tmp_path / "a.jpg"
    local.write_bytes(photo(120, 100, 0))
    src = write_csv(tmp_path / "list.csv", [{"url": url}, {"url": str(local)},
                                            {"url": local.as_uri()}])
    ws = tmp_path / "ws"
    result = dcpipe(ws, "-q", "shard", "--src", str(src), "--public-only", "--workers", "1",
                    "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rejects"] == {"local_refused": 2, "private_address": 1}
    assert "is 127.0.0.1 (public_only)" in _reject_records(ws / "shards")[0]["detail"]
    write_csv(src, [{"url": str(local)}, {"url": url}, {"url": local.as_uri()}])  # reordered
    result = dcpipe(ws, "-q", "shard", "--src", str(src), "--public-only")
    assert result.returncode == 2 and "was rewritten" in result.stderr


def test_plans_from_before_fingerprints_get_them_and_are_checked_from_then_on(server, tmp_path):
    urls = serve_photos(server, 4, prefix="f")
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in urls])
    out = tmp_path / "shards"
    shard(src, out, shard_size=2, **QUICK)
    plan = json.loads((out / "plan.json").read_text())
    [entry] = plan["sources"].values()
    recorded = entry["runs"][0].pop("digests")
    (out / "plan.json").write_text(json.dumps(plan))  # as an older dcpipe wrote it
    assert shard(src, out, shard_size=2, **QUICK)["shards_written"] == 0
    [entry] = json.loads((out / "plan.json").read_text())["sources"].values()
    assert entry["runs"][0]["digests"] == recorded and len(recorded) == 2
    write_csv(src, [{"url": u} for u in urls[::-1]])
    with pytest.raises(SourceError, match=r"rows 0-1 \(shard 0\)"):
        shard(src, out, shard_size=2, **QUICK)


def _bytes_read(call):
    """What `call` returns, and the bytes this process read meanwhile (the kernel's count)."""
    def rchar():
        return int(Path("/proc/self/io").read_text().split("rchar:")[1].split()[0])
    before = rchar()
    result = call()
    return result, rchar() - before


def test_an_unchanged_list_is_not_read_again_and_a_rewrite_behind_old_times_is_refused(tmp_path):
    rows = [{"url": str(tmp_path / f"gone{i}.jpg"), "caption": f"{i:06d}" * 700}
            for i in range(1000)]
    src = write_csv(tmp_path / "list.csv", rows)  # 4 MB: rows that are rejected at once
    out = tmp_path / "shards"
    assert shard(src, out, shard_size=500, **QUICK)["rejected"] == 1000
    stats, read = _bytes_read(lambda: shard(src, out, shard_size=500, **QUICK))
    assert stats["shards_skipped"] == 2 and stats["rows"] == 0
    assert read < src.stat().st_size / 3  # its tail and first row, not every row
    was = src.stat()
    rows[1], rows[2] = rows[2], rows[1]  # same size, far from the tail, old times put back
    write_csv(src, rows)
    os.utime(src, ns=(was.st_atime_ns, was.st_mtime_ns))
    assert src.stat().st_size == was.st_size
    with pytest.raises(SourceError, match=r"was rewritten: rows 0-499 \(shard 0\)"):
        shard(src, out, shard_size=500, **QUICK)
