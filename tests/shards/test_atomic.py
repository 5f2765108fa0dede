"""Atomic writes: the umask, no room on the disk, and the temp files of killed writers."""
import os
import subprocess
import sys

import pytest

from dcpipe.shards.atomic import atomic_write_json, remove_stale_temps

WRITE_SLOWLY = """
import sys, time
from dcpipe.shards.atomic import atomic_write_with
def write(f):
    f.write(b"half a file")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
atomic_write_with(sys.argv[1], write)
"""

FILL_PAST_LIMIT = """
import resource, signal, sys
import torch
from dcpipe.shards.atomic import DiskFull, atomic_write_with
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, as for a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    atomic_write_with(sys.argv[1], lambda f: torch.save({"w": torch.zeros(1_000_000)}, f))
except DiskFull as exc:
    print(exc)
"""

CTRL_C_MID_SAVE = """
import os, signal, sys
import torch
from dcpipe.shards.atomic import atomic_write_with
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Ctrl-C, even if the
# suite runs as a background job (SIGINT inherited ignored)

class CtrlCOnFirstWrite:  # the first chunk torch.save writes, from C++, brings a SIGINT
    def __init__(self, f):
        self.f, self.sent = f, False
    def write(self, data):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return self.f.write(data)
    def flush(self):
        self.f.flush()

try:
    atomic_write_with(sys.argv[1], lambda f: torch.save({"w": torch.arange(100_000)},
                                                        CtrlCOnFirstWrite(f)))
except KeyboardInterrupt:
    print("interrupted after the write")
"""


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "clusters.json", {"k": 3})
    finally:
        os.umask(old)
    assert (tmp_path / "clusters.json").stat().st_mode & 0o777 == mode


def test_a_killed_writers_temp_file_is_swept_a_live_ones_kept(tmp_path):
    target = tmp_path / "round" / "model.pt"
    writer = subprocess.Popen([sys.executable, "-c", WRITE_SLOWLY, str(target)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        [temp] = target.parent.iterdir()
        assert temp.name.startswith(f".model.pt.{writer.pid}.")
        assert remove_stale_temps(tmp_path) == [] and temp.exists()
    finally:
        writer.kill()
        writer.wait()
    assert remove_stale_temps(tmp_path) == [temp]
    assert list(target.parent.iterdir()) == []


def test_a_torch_save_past_the_file_size_limit_names_the_file_and_leaves_no_temp(tmp_path):
    """torch.save alone says "unexpected pos"; the cause (EFBIG here, ENOSPC on a full disk:
    tests/pipeline/test_cli.py) is what the user needs."""
    target = tmp_path / "ckpt" / "last.pt"
    out = subprocess.run([sys.executable, "-c", FILL_PAST_LIMIT, str(target)], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip().startswith(f"file size limit reached while writing {target}"), out.stderr
    assert list(target.parent.iterdir()) == []


def test_ctrl_c_during_a_torch_save_waits_for_the_whole_file(tmp_path):
    """A Ctrl-C landing in a write that torch.save makes from C++ could come out as torch's
    "unexpected pos" RuntimeError (exit 1, a traceback); deferred, the file is written whole
    and the interrupt follows it."""
    import torch
    target = tmp_path / "ckpt" / "last.pt"
    out = subprocess.run([sys.executable, "-c", CTRL_C_MID_SAVE, str(target)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "interrupted after the write", out.stderr
    assert torch.equal(torch.load(target)["w"], torch.arange(100_000))
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]
