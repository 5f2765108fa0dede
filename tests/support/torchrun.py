"""`dcpipe` under torchrun as several "nodes" on this machine: one torchrun process per node,
static rendezvous on 127.0.0.1, as the multi-node recipe in docs/distributed.md runs them."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.cli import DCPIPE

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
TWO_RANKS = [TORCHRUN, "--standalone", "--nproc-per-node", "2"]
AUDIT = Path(__file__).parent / "audit"  # sitecustomize logging each rank's renames


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcpipe_on_nodes(ws, *args, nodes=2, renames_log=None, timeout=180):
    """Run `dcpipe -w ws ARGS` on `nodes` torchrun "nodes" of one process each; returns their
    CompletedProcesses, node 0 first. With `renames_log`, rank R appends the destination of
    every rename it makes (every atomic write ends in one) to `renames_log`.R."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if renames_log:
        env["PYTHONPATH"] = os.pathsep.join([str(AUDIT), env.get("PYTHONPATH", "")])
        env["DCPIPE_TEST_RENAMES"] = str(renames_log)
    procs = [subprocess.Popen([TORCHRUN, "--nnodes", str(nodes), "--nproc-per-node", "1",
                               "--node-rank", str(n), "--master-addr", "127.0.0.1",
                               "--master-port", str(port), DCPIPE, "-w", str(ws), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
             for n in range(nodes)]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:  # the whole group: killing torchrun alone would orphan its ranks
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err)
            for p, (out, err) in zip(procs, outputs)]


def output_or_fail(proc: subprocess.Popen, timeout: float, what: str) -> tuple[str, str]:
    """(stdout, stderr) of proc, started in a session of its own; one that outlasts `timeout` is
    killed with its whole group (its ranks too) and fails the test."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{what} hung")


def run_in_group(cmd: list[str], timeout: float, what: str, env=None):
    """`cmd` to its end in a session of its own (see output_or_fail); a CompletedProcess."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    out, err = output_or_fail(proc, timeout, what)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
