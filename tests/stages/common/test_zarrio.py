"""An interrupted command lets zarr's IO thread finish before the interpreter exits, and a
thread still reading then gets its answer."""
import subprocess
import sys

import pytest


EXIT_WHILE_ZARR_IS_BUSY = """
import asyncio, sys, time
from zarr.core import sync as zarr_sync
from dcpipe.stages.common.zarrio import finish_pending_writes

async def a_long_chunk_write():  # holds zarr's IO thread, as encoding a large chunk does
    await asyncio.sleep(0.05)
    time.sleep(1.0)

asyncio.run_coroutine_threadsafe(a_long_chunk_write(), zarr_sync._get_loop())
time.sleep(0.2)  # Ctrl-C arrives here, the write in flight
if sys.argv[1] == "finish":
    finish_pending_writes()
"""


@pytest.mark.parametrize("finish, clean", [("finish", True), ("exit", False)])
def test_zarr_io_left_busy_by_ctrl_c_ends_cleanly_once_finished(finish, clean):
    """zarr's own exit hook waits 0.2 s for its IO thread, then fails to close the running loop
    and prints a traceback after "dcpipe: interrupted"; the unfinished run shows it still does."""
    out = subprocess.run([sys.executable, "-c", EXIT_WHILE_ZARR_IS_BUSY, finish],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert ("Traceback" not in out.stderr) == clean, out.stderr


READ_DURING_THE_INTERRUPT_HANDLER = """
import asyncio, threading, time
from zarr.core import sync as zarr_sync
from dcpipe.stages.common.zarrio import finish_pending_writes

async def a_chunk_io(seconds):
    await asyncio.sleep(seconds)
    return seconds

asyncio.run_coroutine_threadsafe(a_chunk_io(0.5), zarr_sync._get_loop())  # the write in flight
# a read-ahead thread, as iter_blocks runs one: it starts a read while the handler waits
reader = threading.Thread(target=lambda: time.sleep(0.25) or print(zarr_sync.sync(a_chunk_io(1.0))))
reader.start()
finish_pending_writes()
"""


def test_a_read_begun_while_the_handler_waits_is_answered():
    """Stopping zarr's loop in the handler left such a read waiting for ever, and the exit, which
    joins its thread, hung (1 in 40 Ctrl-C'd `dcpipe run`s, in the cluster stage's read-ahead)."""
    out = subprocess.run([sys.executable, "-c", READ_DURING_THE_INTERRUPT_HANDLER],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.0"
    assert "Traceback" not in out.stderr, out.stderr
