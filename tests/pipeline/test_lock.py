import subprocess
import sys
import time

import pytest

from dcpipe.pipeline.lock import WorkspaceBusy, workspace_lock

HOLD = """
import sys, time
from pathlib import Path
from dcpipe.pipeline.lock import workspace_lock
with workspace_lock(Path(sys.argv[1])):
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
        with pytest.raises(WorkspaceBusy, match=f"pid {proc.pid}"):
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
