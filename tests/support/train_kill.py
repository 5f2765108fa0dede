"""`train` in a child process group (plain or under torchrun), and a SIGKILL at its first
checkpoint: what the kill-and-resume tests of both methods share."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

RUNNER = Path(__file__).with_name("train_runner.py")


def launch(launcher: list, shards_dir, labels_dir, out, options: dict) -> subprocess.Popen:
    """Run train() in a new process group (so a kill reaches its loader workers too)."""
    payload = {"shards": str(shards_dir), "labels": str(labels_dir), "out": str(out),
               "options": options}
    return subprocess.Popen([*launcher, str(RUNNER), json.dumps(payload)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_at_first_checkpoint(proc: subprocess.Popen, out: Path) -> int:
    """SIGKILL the run's whole group once its checkpoint exists; returns the checkpoint's step."""
    ckpt = out / "ckpt" / "last.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (out / "train.json").exists(), proc.stderr.read()[-2000:]
    return torch.load(ckpt, weights_only=True)["step"]
