"""The installed `dcpipe` command, run as a user runs it."""
import os
import subprocess
import sys
from pathlib import Path

DCPIPE = str(Path(sys.executable).parent / "dcpipe")


def dcpipe(ws, *args, env=None, timeout=120, umask=-1):
    return dcpipe_args("-w", str(ws), *args, env=env, timeout=timeout, umask=umask)


def dcpipe_args(*args, env=None, timeout=120, umask=-1):
    """`dcpipe` with exactly these arguments (no -w put first)."""
    return subprocess.run([DCPIPE, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, umask=umask)
