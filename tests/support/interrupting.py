"""A loader whose workers meet a Ctrl-C as they start or stop.

torch's loader iterator starts its worker processes in __init__ and stops them in __del__;
Workers does the same steps' bookkeeping and sends the process SIGINT in the middle of one.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

EVENTS = []


def terminal_sigint() -> None:
    """SIGINT as a terminal delivers it: a suite started in the background inherits it ignored,
    and Python keeps it ignored, so the Ctrl-C under test would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ctrl_c_now() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(1000))  # Python's handler runs here, between bytecodes


class Workers:
    def __init__(self, when: str, item):
        if when == "start":
            ctrl_c_now()
        EVENTS.append("started")
        self.when, self.item = when, item

    def __iter__(self):
        return self

    def __next__(self):
        return self.item

    def __del__(self):
        if self.when == "stop":
            ctrl_c_now()
        EVENTS.append("stopped")


class Loader:
    def __init__(self, when: str, item="item"):
        self.when, self.item = when, item

    def __iter__(self):
        return Workers(self.when, self.item)


def run_interrupted(script: str, when: str) -> str:
    """EVENTS, space-separated, after `script` ran in a fresh interpreter with `raised`, Loader,
    EVENTS, torch and sys imported; its stderr must show no traceback."""
    prelude = ("import sys, torch\nfrom dcpipe.stages.common.workererrors import raised\n"
               "from support.interrupting import EVENTS, Loader\n")
    tests = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", prelude + script + "\nprint(' '.join(EVENTS))",
                          when], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": tests}, preexec_fn=terminal_sigint)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stdout.strip()
