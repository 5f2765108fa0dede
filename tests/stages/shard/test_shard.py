import json
import multiprocessing
import os
import signal
import subprocess
import threading
import time

import pytest
import webdataset as wds
from support.imagefiles import photo
from support.settings import with_settings
from support.imageserver import ImageServer
from support.shard_data import collection, file_digests, hostile_rows, rejects, serve_photos, write_csv

from dcpipe.shards.manifest import load_manifest
from dcpipe.shards.naming import is_valid_key
from dcpipe.stages.shard import ShardSettings
from dcpipe.stages.shard import shard as shard_stage
from dcpipe.stages.shard.distributor import WorkerDied
from dcpipe.stages.shard.stage import resolve_nodes
from dcpipe.stages.sources import fetch as fetch_module
from dcpipe.stages.sources.tables import SourceError

shard = with_settings(shard_stage, ShardSettings)
QUICK = {"progress": False, "timeout": 3.0, "max_bytes": 1 << 20,  # generous: CI machines are busy
         "retries": 0}


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        yield s


def test_every_row_is_a_sample_or_a_specific_reject(server, tmp_path):
    urls = serve_photos(server, 6)
    good = [{"url": u, "caption": f"photo {i}"} for i, u in enumerate(urls)]
    good += [{"url": urls[0], "key": "../../x"}, {"url": urls[1], "key": "a.b/c"}]
    bad = hostile_rows(server, tmp_path)
    src = write_csv(tmp_path / "list.csv", good + [row for row, _ in bad])
    out = tmp_path / "ws" / "shards"
    stats = shard(src, out, shard_size=7, workers=2, key_col="key", **QUICK)
    assert stats["rows"] == len(good) + len(bad) == stats["written"] + stats["rejected"]
    assert stats["written"] == len(good)
    assert rejects(out) == {len(good) + i: reason for i, (_, reason) in enumerate(bad)}
    samples = collection(out)
    assert {"______x", "a_b_c"} <= set(samples) and all(is_valid_key(k) for k in samples)
    assert samples["000000000001"][1]["meta"] == {"caption": "photo 1"}
    assert not list(tmp_path.glob("x*")) and not (tmp_path / "ws" / "x").exists()
    manifest = load_manifest(out)["shards"]
    assert sum(e["rows"] for e in manifest) == stats["rows"]
    assert all(e["written"] + e["rejected"] == e["rows"] for e in manifest)


def test_downloads_are_retried_recorded_and_share_connections(server, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module, "BACKOFF_S", 0.05)
    urls = serve_photos(server, 12, prefix="keep")
    flaky = [server.url("flaky/keep0.jpg?fail=1"), server.url("flaky/keep1.jpg?fail=9")]
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in urls + flaky])
    before = server.connections
    stats = shard(src, tmp_path / "shards", workers=1, threads=2, **{**QUICK, "retries": 2})
    assert (stats["written"], stats["rejects"]) == (13, {"http_503": 1})
    record = json.loads((tmp_path / "shards" / "000000.rejects.jsonl").read_text())
    assert (record["row"], record["reason"], record["attempts"]) == (13, "http_503", 3)
    # 2 threads keep 2 connections; only the four 503 answers (not kept) cost a new one
    assert server.connections - before <= 2 + 4 < len(urls)


def test_a_slow_download_does_not_hold_up_the_rest_of_its_shard(server, tmp_path):
    """The first row's server answers only once the 30 rows after it have been requested: the
    worker must go on fetching and decoding them while that row waits (in a crawl, dead and
    slow servers otherwise stall a whole worker for (retries + 1) x timeout each). The timeout
    is far longer than those 30 rows take, even on a busy machine."""
    urls = serve_photos(server, 30, prefix="after")
    gate = server.url(f"gate/after0.jpg?after={sum(server.hits.values()) + len(urls)}")
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in [gate] + urls])
    stats = shard(src, tmp_path / "shards", workers=1, threads=2, **{**QUICK, "timeout": 10.0})
    assert (stats["written"], stats["rejects"]) == (31, {})
    samples = sorted(collection(tmp_path / "shards").items())
    assert [meta["row"] for _, (_, meta) in samples] == list(range(31))  # still in row order


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_waiting_on_slow_downloads_do_not_hold_up_the_next_shards(server, tmp_path,
                                                                         workers):
    """The first row of each of the first `workers` shards answers only once every other row
    has been requested: each worker must work the shards after it meanwhile (with one shard at
    a time every worker would hold a waiting shard, and those rows would time out)."""
    prefix = f"next{workers}"
    urls = serve_photos(server, 3 * workers, prefix=prefix)
    after = sum(server.hits.values()) + workers - 1 + len(urls)  # the other gates count too
    gates = [server.url(f"gate/{prefix}{i}.jpg?after={after}") for i in range(workers)]
    rows = [u for i, gate in enumerate(gates) for u in (gate, urls[i])] + urls[workers:]
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in rows])
    stats = shard(src, tmp_path / "shards", shard_size=2, workers=workers, shards_per_worker=2,
                  threads=2, **{**QUICK, "timeout": 10.0})
    assert (stats["written"], stats["rejects"]) == (len(rows), {})
    assert [e["index"] for e in load_manifest(tmp_path / "shards")["shards"]] == list(
        range(2 * workers))


def test_a_killed_worker_stops_the_run_with_a_clear_error_and_keeps_written_shards(server,
                                                                                    tmp_path):
    """The OOM killer takes a worker: the run stops (it used to wait forever for the lost
    shard) and what was written stays recorded."""
    urls = serve_photos(server, 2, prefix="oom")
    gated = [server.url(f"gate/oom0.jpg?after={10**9}&n={i}") for i in range(4)]  # busy 20 s
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in urls + gated])
    out = tmp_path / "shards"

    def kill_a_worker_once_shard_0_is_written():
        while not load_manifest(out)["shards"]:
            time.sleep(0.05)
        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_a_worker_once_shard_0_is_written, daemon=True)
    killer.start()
    started = time.monotonic()
    with pytest.raises(WorkerDied, match="exit code -9"):
        shard(src, out, shard_size=2, workers=2, **{**QUICK, "timeout": 30.0})
    assert time.monotonic() - started < 15  # well before the gated rows would end
    assert [e["index"] for e in load_manifest(out)["shards"]] == [0]
    assert not multiprocessing.active_children()


def _photo_folder(root, names):
    for i, rel in enumerate(names):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(photo(300, 200, i))
    return root


def test_shards_read_back_with_webdataset_and_tar(tmp_path):
    names = [f"{c}/{i}.jpg" for c in ("cat", "dog") for i in range(3)]
    root = _photo_folder(tmp_path / "photos", names)
    out = tmp_path / "shards"
    shard(root, out, shard_size=4, progress=False)
    tars = sorted(str(p) for p in out.glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert sorted(s["json"]["source"] for s in samples) == sorted(names)
    assert all(s["json"]["label"] == s["json"]["source"].split("/")[0] for s in samples)
    assert all(s["jpg"].size == (300, 200) for s in samples)
    names = subprocess.run(["tar", "-tf", tars[0]], capture_output=True, text=True, check=True)
    expected = [f"00000000000{i}.{e}" for i in range(4) for e in ("jpg", "json")]
    assert names.stdout.split() == expected
    per_shard = [sorted({s["json"]["label"] for s in samples[:4]}),
                 sorted({s["json"]["label"] for s in samples[4:]})]
    assert [e["classes"] for e in load_manifest(out)["shards"]] == per_shard


def test_dedup_is_the_same_with_any_worker_count(server, tmp_path):
    urls = serve_photos(server, 4, prefix="d")
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in urls + urls[::-1] + urls[:1]])
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        stats = shard(src, out, shard_size=3, workers=workers, dedup=True, **QUICK)
        assert (stats["written"], stats["rejects"]) == (4, {"duplicate": 5})
        results[workers] = file_digests(out)
    assert results[1] == results[2]


def test_growth_adds_shards_and_leaves_old_ones_untouched(server, tmp_path):
    urls = serve_photos(server, 14, prefix="g")
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in urls[:10]])
    out = tmp_path / "shards"
    shard(src, out, shard_size=4, **QUICK)
    before = file_digests(out)
    assert shard(src, out, shard_size=4, **QUICK)["shards_written"] == 0
    write_csv(src, [{"url": u} for u in urls[10:]], mode="a")
    stats = shard(src, out, shard_size=4, **QUICK)
    after = file_digests(out)
    assert stats["shards_written"] == 1 and stats["rows"] == 4
    assert {k: after[k] for k in before} == before and set(after) - set(before) == {"000003.tar"}
    assert [(e["row_start"], e["row_end"]) for e in load_manifest(out)["shards"]] == [
        (0, 4), (4, 8), (8, 10), (10, 14)]


def test_lost_plan_never_reuses_recorded_shard_indices(server, tmp_path):
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in serve_photos(server, 3, "l")])
    out = tmp_path / "shards"
    shard(src, out, shard_size=2, **QUICK)
    before = file_digests(out)
    (out / "plan.json").unlink()
    assert shard(src, out, shard_size=2, **QUICK)["shards_written"] == 2
    assert {k: file_digests(out)[k] for k in before} == before and len(file_digests(out)) == 4


def test_folder_growth_numbers_new_files_after_old_ones(tmp_path):
    root = _photo_folder(tmp_path / "photos", ["cat/a.jpg", "cat/c.jpg", "dog/a.jpg"])
    out = tmp_path / "shards"
    shard(root, out, shard_size=2, **QUICK)
    before = file_digests(out)
    _photo_folder(root, ["cat/b.jpg"])  # sorts between files already sharded
    stats = shard(root, out, shard_size=2, **QUICK)
    assert stats["shards_written"] == 1 and {k: file_digests(out)[k] for k in before} == before
    rows = {m["row"]: m["source"] for _, m in collection(out).values()}
    assert sorted(rows) == [0, 1, 2, 3] and rows[3] == "cat/b.jpg"


def test_a_folder_named_from_another_directory_is_the_same_source(tmp_path, monkeypatch):
    root = _photo_folder(tmp_path / "photos", ["cat/a.jpg", "dog/b.jpg"])
    (root / "cat" / "bad.jpg").write_bytes(b"not an image")
    out = tmp_path / "shards"
    monkeypatch.chdir(tmp_path)
    shard("photos", out, shard_size=2, **QUICK)
    _photo_folder(root, ["dog/c.jpg"])
    monkeypatch.chdir(root / "cat")
    stats = shard("../../photos", out, shard_size=2, **QUICK)  # was: "photos was rewritten"
    assert (stats["shards_skipped"], stats["shards_written"]) == (2, 1)
    assert {m["source"] for _, m in collection(out).values()} == {"cat/a.jpg", "dog/b.jpg",
                                                                  "dog/c.jpg"}
    records = [json.loads(line) for path in sorted(out.glob("*.rejects.jsonl"))
               for line in path.read_text().splitlines()]
    assert [r["source"] for r in records] == ["cat/bad.jpg"]


def test_a_folder_planned_by_version_1_gets_its_fingerprints_again(tmp_path, monkeypatch):
    root = _photo_folder(tmp_path / "photos", ["cat/a.jpg", "cat/b.jpg", "dog/c.jpg"])
    out = tmp_path / "shards"
    shard(root, out, shard_size=2, **QUICK)
    plan = json.loads((out / "plan.json").read_text())
    [entry] = plan["sources"].values()
    fingerprints = [run["digests"] for run in entry["runs"]]
    for run in entry["runs"]:  # version 1 hashed the path as typed: here "photos/..."
        run["digests"] = ["0" * 32] * len(run["digests"])
    (out / "plan.json").write_text(json.dumps({**plan, "version": 1}))
    monkeypatch.chdir(tmp_path)
    assert shard("photos", out, shard_size=2, **QUICK)["shards_skipped"] == 2
    plan = json.loads((out / "plan.json").read_text())
    [entry] = plan["sources"].values()
    assert plan["version"] == 2 and [run["digests"] for run in entry["runs"]] == fingerprints


def test_nodes_write_disjoint_shards_then_one_run_records_them(server, tmp_path):
    urls = serve_photos(server, 10, prefix="n")
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in urls])
    out = tmp_path / "shards"
    written = [shard(src, out, shard_size=2, node_rank=r, num_nodes=2, **QUICK)["shards_written"]
               for r in (0, 1)]
    assert written == [3, 2] and load_manifest(out)["shards"] == []
    before = file_digests(out)
    stats = shard(src, out, shard_size=2, **QUICK)
    assert stats["shards_written"] == 0 and stats["shards_skipped"] == 5
    assert file_digests(out) == before and len(collection(out)) == 10


def test_bad_options_and_changed_options_fail_clearly(server, tmp_path):
    src = write_csv(tmp_path / "list.csv", [{"url": u} for u in serve_photos(server, 2, "o")])
    out = tmp_path / "shards"
    with pytest.raises(ValueError, match="dedup needs"):
        shard(src, out, dedup=True, num_nodes=2, node_rank=0, **QUICK)
    with pytest.raises(ValueError, match="shard_size"):
        shard(src, out, shard_size=0, **QUICK)
    shard(src, out, **QUICK)
    with pytest.raises(SourceError, match="--image-size: planned 256, now 128"):
        shard(src, out, image_size=128, **QUICK)
    assert json.loads((out / "plan.json").read_text())["sources"]


def test_node_split_comes_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_nodes() == (1, 3) and resolve_nodes(0, 1) == (0, 1)
    with pytest.raises(ValueError, match="--node-rank"):
        resolve_nodes(3, 3)
