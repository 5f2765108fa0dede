"""The installed `dcpipe` command, run as a user runs it."""
import os
import subprocess
import sys
from pathlib import Path

DCPIPE = str(Path(sys.executable).parent / "dcpipe")


def dcpipe(ws, *args, env=None, timeout=120, umask=-1):
    return subprocess.run([DCPIPE, "-w", str(ws), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, umask=umask)
