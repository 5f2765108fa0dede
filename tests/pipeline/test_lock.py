import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import DCPIPE, dcpipe
from support.workspaces import tiny_workspace

from dcpipe.pipeline.lock import WorkspaceBusy, shard_lock, workspace_lock

HOLD = """
import sys, time
from pathlib import Path
from dcpipe.pipeline.lock import workspace_lock
with workspace_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""
HOLD_SHARD = """
import sys, time
from pathlib import Path
from dcpipe.pipeline.lock import shard_lock
node, rank = int(sys.argv[2]), int(sys.argv[3])
with shard_lock(Path(sys.argv[1]), rank, 2 if node else 1):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_with_the_holders_pid(tmp_path):
    lock = tmp_path / ".lock"
    proc = _holder(lock)
    try:
        with pytest.raises(WorkspaceBusy, match=f"pid {proc.pid} on {socket.gethostname()}"):
            with workspace_lock(lock):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_holder_is_free_again(tmp_path):
    lock = tmp_path / ".lock"
    proc = _holder(lock)
    proc.kill()
    proc.wait()
    start = time.monotonic()
    with workspace_lock(lock):
        pass
    assert time.monotonic() - start < 1


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_train_retried_at_once_after_a_sigkill_is_not_busy(tmp_path):
    """The killed parent's DataLoader workers outlive it for seconds; they must not hold the lock."""
    ws = tiny_workspace(tmp_path / "ws")
    assert dcpipe(ws, "-q", "cluster", "--round", "0").returncode == 0
    run = subprocess.Popen([DCPIPE, "-q", "-w", str(ws), "train", "--round", "0", "--workers", "2",
                            "--reassign", "50"], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(_children(run.pid)) < 2:  # the loader's workers are up
            assert time.monotonic() < deadline and run.poll() is None, run.stderr.read()
            time.sleep(0.05)
        workers = _children(run.pid)
        run.kill()
        run.wait()
        assert any(_alive(w) for w in workers)  # orphans, still running
        retry = dcpipe(ws, "-q", "train", "--round", "0", "--reassign", "0.5")
        assert retry.returncode != 75, retry.stderr
        assert retry.returncode == 0, retry.stderr
    finally:
        with contextlib.suppress(ProcessLookupError):  # orphaned workers, if any are left
            os.killpg(run.pid, signal.SIGKILL)


@pytest.mark.parametrize("first, second, refused", [
    ("node", "single", True), ("single", "node", True), ("node", "same node", True),
    ("node", "other node", False)])
def test_shard_node_locks_and_the_workspace_lock(tmp_path, first, second, refused):
    lock = tmp_path / ".lock"
    take = {"node": (True, 0), "same node": (True, 0), "other node": (True, 1), "single": (False, 0)}
    node, rank = take[first]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SHARD, str(lock), str(int(node)), str(rank)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        node, rank = take[second]
        if refused:
            with pytest.raises(WorkspaceBusy, match=f"pid {holder.pid}"):
                with shard_lock(lock, rank, 2 if node else 1):
                    pass
        else:
            with shard_lock(lock, rank, 2 if node else 1):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_plain_shard_is_refused_while_a_node_run_shards(tmp_path):
    """Both would write 000000.tar: the plain run exits 75 without touching the shards."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SHARD, str(tmp_path / ".lock"), "1", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "list.txt").write_text("/nonexistent.jpg\n")
        out = dcpipe(tmp_path, "shard", "--src", str(tmp_path / "list.txt"))
        assert out.returncode == 75 and "shard node 0 of 2" in out.stderr
        assert not (tmp_path / "shards").exists()
    finally:
        holder.kill()
        holder.wait()
