"""Files through the CLI: no room on the disk, debris of killed writers, refused or damaged
files exiting 2 with the file named."""
import shutil
import subprocess
import sys

import pytest
import torch
from support.cli import DCPIPE, dcpipe
from support.tiny_shards import add_shard
from support.workspaces import tiny_workspace

NAMESPACE_OK = shutil.which("unshare") and subprocess.run(
    ["unshare", "-Urm", "true"], capture_output=True).returncode == 0

ON_A_SMALL_DISK = """
set -e
mount -t tmpfs -o size="$SIZE"k none "$MNT"
cp -a "$WS" "$MNT/ws"
set +e
"$DCPIPE" -q -w "$MNT/ws" train --round 0 --checkpoint-every 1 2>"$MNT/err"
echo "exit $?"
cat "$MNT/err"
find "$MNT/ws" -name '.*.tmp' -o -name '.*.partial'
"""


@pytest.mark.skipif(not NAMESPACE_OK, reason="needs unshare -Urm (a user namespace for a tmpfs)")
def test_a_full_disk_while_writing_a_checkpoint_says_so_and_leaves_no_temp(tmp_path):
    """A real ENOSPC: the workspace copied onto a tmpfs with 200 KB to spare (a checkpoint of
    this net is ~580 KB), mounted in a private user + mount namespace, so no root needed."""
    ws = tiny_workspace(tmp_path / "ws")
    assert dcpipe(ws, "-q", "cluster", "--round", "0").returncode == 0
    used_kb = int(subprocess.run(["du", "-sk", str(ws)], capture_output=True, text=True).stdout.split()[0])
    (tmp_path / "mnt").mkdir()
    env = {"SIZE": str(used_kb + 200), "MNT": str(tmp_path / "mnt"), "WS": str(ws), "DCPIPE": DCPIPE,
           "PATH": "/usr/bin:/bin", **{k: v for k, v in __import__("os").environ.items()
                                       if k.startswith("PYTHON")}}
    out = subprocess.run(["unshare", "-Urm", "sh", "-c", ON_A_SMALL_DISK], capture_output=True,
                         text=True, env=env, timeout=120)
    lines = out.stdout.splitlines()
    assert lines[0] == "exit 2", out.stdout + out.stderr
    ckpt = tmp_path / "mnt" / "ws" / "rounds" / "0000" / "ckpt" / "last.pt"
    assert lines[1].startswith(f"dcpipe: error: disk full while writing {ckpt}")
    assert lines[2:] == []  # one error line, no traceback, no temp file left


def test_temp_files_of_killed_writers_are_removed_by_the_next_command(tmp_path):
    ws = tiny_workspace(tmp_path / "ws", n_shards=1, per_shard=4)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    debris = [ws / "shards" / f".000001.tar.{dead}.0badcafe.partial",
              ws / "rounds" / "0000" / "ckpt" / f".last.pt.{dead}.12345678.tmp"]
    kept = ws / "rounds" / "0000" / ".notes.tmp"  # not a name dcpipe gives its temp files
    for path in (*debris, kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    out = dcpipe(ws, "-q", "run", "--rounds", "0")
    assert out.returncode == 0, out.stderr
    assert not any(p.exists() for p in debris) and kept.exists()


def test_a_pickled_model_is_refused_with_exit_2_naming_it(tmp_path):
    ws = tiny_workspace(tmp_path / "ws", n_shards=1, per_shard=4)
    r0 = ws / "rounds" / "0000"
    r0.mkdir(parents=True)
    torch.save({"meta": {"format": "x"}, "run": subprocess.call}, r0 / "model.pt")  # a global
    (r0 / "train.json").write_text("{}")
    out = dcpipe(ws, "extract", "--round", "1")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"dcpipe: error: {r0 / 'model.pt'}: refused: it holds pickled objects")
    assert "Traceback" not in out.stderr


def test_a_damaged_feature_store_exits_2_naming_it(tmp_path):
    ws = tiny_workspace(tmp_path / "ws", n_shards=2, per_shard=10)
    assert dcpipe(ws, "-q", "extract", "--round", "0").returncode == 0
    store = ws / "rounds" / "0000" / "features.zarr"
    (store / "keys" / "000001.json").unlink()
    out = dcpipe(ws, "-q", "cluster", "--round", "0")
    assert out.returncode == 2, out.stderr
    assert f"dcpipe: error: {store}: keys of shard 1 missing" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("line, problem", [
    (b'{"index": 0, "n_samples": 2, "sha256": "00"}\n', "entry without name"),
    (b'{"index": 0, "name": "000000", "n_sam\n', "not a JSON entry"),
])
def test_a_damaged_manifest_line_exits_2_naming_file_and_line(tmp_path, line, problem):
    add_shard(tmp_path / "shards", 0)
    add_shard(tmp_path / "shards", 1)
    manifest = tmp_path / "shards" / "manifest.jsonl"
    first, second = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(first + line + second)
    for command in (["status"], ["run", "--rounds", "1"]):
        out = dcpipe(tmp_path, *command)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"dcpipe: error: {manifest} line 2: {problem}")
