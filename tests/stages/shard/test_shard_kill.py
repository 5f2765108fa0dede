"""kill -9 in the middle of a sharding run, then the same command again: same collection."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from support.imageserver import ImageServer
from support.shard_data import collection, file_digests, rejects, serve_photos, write_csv

from dcpipe.shards.atomic import remove_stale_temps
from dcpipe.shards.manifest import load_manifest
from dcpipe.stages.shard import ShardSettings, shard

SETTINGS = ShardSettings(shard_size=4, workers=2, dedup=True)
RUN = ("import sys; from dcpipe.stages.shard import ShardSettings, shard; "
       "shard(sys.argv[1], sys.argv[2], ShardSettings(shard_size=4, workers=2, dedup=True), "
       "progress=False)")


def _live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are alive (zombies waiting to be reaped are not)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _kill_after_some_shards(src, out) -> int:
    """kill -9 the main process once 2 shards are recorded; its workers must then exit alone."""
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(src), str(out)],
                            start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(load_manifest(out)["shards"])
            if done >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                while _live_group_members(proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert not _live_group_members(proc.pid), "workers outlived the killed main"
                return done
            time.sleep(0.02)
        raise AssertionError("the run ended or stalled before it could be killed")
    finally:
        if _live_group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    with ImageServer() as server:
        urls = [u.replace("/f/", "/delay/") for u in serve_photos(server, 30)]
        urls += urls[:6] + [server.url("f/missing.jpg")] * 4  # duplicates and rejects
        src = write_csv(tmp_path / "list.csv", [{"url": u} for u in urls])
        killed, clean = tmp_path / "killed", tmp_path / "clean"
        done_at_kill = _kill_after_some_shards(src, killed)
        assert 2 <= done_at_kill < 10
        remove_stale_temps(killed)  # as `dcpipe shard` does first: the killed writer's debris
        shard(src, killed, SETTINGS, progress=False)
        shard(src, clean, replace(SETTINGS, workers=1), progress=False)
    assert load_manifest(killed) == load_manifest(clean)
    assert collection(killed) == collection(clean) and len(collection(clean)) == 30
    assert rejects(killed) == rejects(clean)
    assert list(rejects(clean).values()).count("duplicate") == 6
    assert file_digests(killed) == file_digests(clean)
    assert not list(killed.glob(".*.partial"))
