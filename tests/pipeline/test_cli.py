import json
import random
import signal
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner
from PIL import Image

from dcpipe.pipeline.cli import handled
from dcpipe.pipeline.config import template
from dcpipe.pipeline.lock import workspace_lock
from dcpipe.pipeline.workspace import Workspace, WorkspaceError
from support.cli import DCPIPE, dcpipe, dcpipe_args
from support.interrupting import terminal_sigint
from support.tiny_shards import add_shard
from support.workspaces import tiny_workspace


def test_status_json_has_the_documented_keys(tmp_path):
    add_shard(tmp_path / "shards", 0, n=3)
    add_shard(tmp_path / "shards", 1, n=2)
    out = dcpipe(tmp_path, "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert set(status) == {"version", "workspace", "config", "collection", "rounds"}
    assert status["collection"] == {"shards": 2, "rows": 7, "samples": 5, "rejected": 2,
                                    "rejects_by_reason": {"http_404": 2}, "bytes": status["collection"]["bytes"],
                                    "foreign_tars": 0}
    text = dcpipe(tmp_path, "status").stdout
    assert "2 rejected" in text and "http_404: 2" in text


def test_bad_config_exits_2_with_the_file_named(tmp_path):
    (tmp_path / "dcpipe.toml").write_text("[cluster]\nk = 'many'\n")
    out = dcpipe(tmp_path, "train", "--round", "0")
    assert out.returncode == 2
    assert "dcpipe.toml" in out.stderr and "k must be int" in out.stderr


def test_train_without_labels_exits_2_and_says_what_to_run(tmp_path):
    add_shard(tmp_path / "shards", 0)
    out = dcpipe(tmp_path, "train", "--round", "3")
    assert out.returncode == 2
    assert "dcpipe cluster --round 3" in out.stderr


def test_busy_workspace_exits_75(tmp_path):
    hold = ("import sys, time; from pathlib import Path; from dcpipe.pipeline.lock import workspace_lock\n"
            "with workspace_lock(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = dcpipe(tmp_path, "run", "--rounds", "1")
        assert out.returncode == 75
        assert "busy" in out.stderr and str(holder.pid) in out.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_store_made_with_another_model_exits_2_and_says_what_to_do(tmp_path):
    add_shard(tmp_path / "shards", 0, n=4)
    (tmp_path / "dcpipe.toml").write_text("[model]\nwidth = 4\n[extract]\nworkers = 0\n")
    assert dcpipe(tmp_path, "extract", "--round", "0").returncode == 0
    (tmp_path / "dcpipe.toml").write_text("[model]\nwidth = 8\n[extract]\nworkers = 0\n")
    out = dcpipe(tmp_path, "extract", "--round", "0")
    assert out.returncode == 2 and "delete it to extract again" in out.stderr


def test_a_bug_exits_1_with_its_traceback_not_as_bad_input(tmp_path):
    @click.command()
    @handled(locked=False)
    def broken(ctx):
        raise ValueError("an internal invariant broke")

    result = CliRunner().invoke(broken, obj={"ws": Workspace(tmp_path)})
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)

    @click.command()
    @handled(locked=False)
    def refused(ctx):
        raise WorkspaceError("round 3 has no labels")

    result = CliRunner().invoke(refused, obj={"ws": Workspace(tmp_path)})
    assert result.exit_code == 2 and "round 3 has no labels" in result.output


# ---------------------------------------------------------------- conventions of click apps
def test_version_flag_and_status_json_name_the_same_version(tmp_path):
    add_shard(tmp_path / "shards", 0)
    out = dcpipe_args("--version")
    assert out.returncode == 0 and out.stdout.startswith("dcpipe, version ")
    version = out.stdout.split()[-1]
    assert json.loads(dcpipe(tmp_path, "status", "--json").stdout)["version"] == version


def test_workspace_and_quiet_flags_work_after_the_subcommand(tmp_path):
    add_shard(tmp_path / "ws" / "shards", 0, n=3)
    out = dcpipe_args("status", "--json", "-w", str(tmp_path / "ws"), "-q")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["collection"]["samples"] == 3
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    shard = dcpipe_args("shard", "--src", str(tmp_path / "images"), "--workers", "1", "-q",
                        "--workspace", str(tmp_path / "ws"))
    assert shard.returncode == 0, shard.stderr
    assert (shard.stdout, shard.stderr) == ("", "")  # -q after the name: no bar, no summary
    assert json.loads(dcpipe(tmp_path / "ws", "status", "--json").stdout)["collection"]["samples"] == 4


def test_every_help_shows_the_defaults_it_overrides():
    commands = ("init", "shard", "extract", "cluster", "train", "run", "status", "verify",
                "demo", "eval", "embed", "report")
    helps = {name: dcpipe_args(name, "--help").stdout for name in commands}
    assert all("-w, --workspace" in text and "-q, --quiet" in text for text in helps.values())
    flat = {name: " ".join(text.split()) for name, text in helps.items()}
    assert "--k INTEGER RANGE Number of clusters. [default: (dcpipe.toml, else 100 for " \
           "deepcluster, 300 for deepcluster-v2); 1<=x<=1000000]" in flat["cluster"]
    assert "[default: (dcpipe.toml, else 256); 1<=x<=16384]" in flat["shard"]  # --image-size
    assert "[default: (dcpipe.toml, else 200); 1<=x<=" in flat["train"]  # --checkpoint-every
    assert "--knn-k INTEGER RANGE [default: 20; 1<=x<=10000]" in flat["eval"]
    assert "--rounds INTEGER RANGE [default: 6; x>=1]" in flat["demo"]


@pytest.mark.parametrize("args, flag", [
    (("cluster", "--round", "0", "--pca-dim", "5000"), "'--pca-dim': 5000 is not in the range"),
    (("train", "--round", "0", "--lr", "0"), "'--lr': 0.0 is not in the range 0<x<=100"),
    (("shard", "--src", "list.csv", "--format", "folders"), "'--format': 'folders' is not one of"),
    (("cluster", "--round", "-1"), "'--round': -1 is not in the range x>=0"),
    (("eval", "--round", "-1", "--train", "a", "--test", "b"), "'--round': -1 is not in the range"),
    (("eval", "--train", "a", "--test", "b", "--knn-k", "0"), "'--knn-k': 0 is not in the range"),
    (("shard", "--src", "list.csv"), "with --url-col (url_col= from Python) (columns: name)"),
    (("shard", "--src", "list.csv", "--url-col", "link"), "missing column(s) link named by --url-col"),
])
def test_bad_flags_exit_2_naming_the_flag(tmp_path, args, flag):
    (tmp_path / "list.csv").write_text("name\na.jpg\n")
    out = subprocess.run([DCPIPE, "-w", str(tmp_path), *args], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and flag in " ".join(out.stderr.split()), out.stderr


def test_status_of_a_missing_workspace_or_a_bad_config_exits_2(tmp_path):
    missing = dcpipe(tmp_path / "nowhere", "status")
    assert missing.returncode == 2 and "is not a dcpipe workspace" in missing.stderr
    (tmp_path / "dcpipe.toml").write_text("[cluster]\nk = 0\n")
    bad = dcpipe(tmp_path, "status", "--json")
    assert bad.returncode == 2 and "k must be in [1, 1000000], got 0" in bad.stderr


def interrupt_run(ws, after_s: float) -> None:
    """Ctrl-C a `dcpipe run` `after_s` seconds into its first round: it exits 130 within 60 s,
    says so, prints no traceback and lets go of the workspace."""
    run = subprocess.Popen([DCPIPE, "-w", str(ws), "run", "--rounds", "1000"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           preexec_fn=terminal_sigint)
    try:
        deadline = time.monotonic() + 60
        while not (ws / "rounds" / "0000").exists():  # a round has begun: the command is busy
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(after_s)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()  # never leave a 1000-round run behind a failed check
        run.wait()
    assert run.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr[-4000:]
    with workspace_lock(ws / ".lock"):  # free: the interrupted command let go of it
        pass


def test_ctrl_c_exits_130_and_frees_the_workspace(tmp_path):
    interrupt_run(tiny_workspace(tmp_path / "ws"), after_s=0)


@pytest.mark.slow
def test_ctrl_c_at_100_random_moments_of_a_run(tmp_path):
    """Races seen once in 40-150 interrupts (a read-ahead stranded by zarr's stopped loop, an
    interrupt lost in a finaliser, a worker's traceback): each stage, start and end is hit."""
    rng = random.Random(12)
    for i in range(100):
        interrupt_run(tiny_workspace(tmp_path / f"ws{i}"), after_s=rng.uniform(0, 4))


def test_quiet_means_silent_and_json_only_when_asked(tmp_path):
    ws = tiny_workspace(tmp_path / "ws", per_shard=20)  # 40 rows, k = 4: faiss would warn
    loud = dcpipe(ws, "cluster", "--round", "0")
    assert loud.returncode == 0, loud.stderr
    assert "faiss advises at least 156 rows" in loud.stderr
    assert loud.stdout.startswith("k 4, n_samples 40") and "{" not in loud.stdout
    quiet = dcpipe(ws, "-q", "cluster", "--round", "0")
    assert quiet.returncode == 0 and (quiet.stdout, quiet.stderr) == ("", "")
    asked = dcpipe(ws, "-q", "cluster", "--round", "0", "--json")
    assert asked.stderr == "" and json.loads(asked.stdout)["k"] == 4


def test_embed_and_eval_show_progress_unless_quiet(tmp_path):
    ws = tiny_workspace(tmp_path / "ws", n_shards=1, per_shard=12)
    shards, out = str(ws / "shards"), str(tmp_path / "f.npy")
    embed = dcpipe(ws, "embed", shards, "-o", out)
    assert embed.returncode == 0 and "embed: 100%" in embed.stderr and "12/12" in embed.stderr
    quiet = dcpipe(ws, "-q", "embed", shards, "-o", out)
    assert quiet.returncode == 0 and (quiet.stdout, quiet.stderr) == ("", "")
    flags = ("eval", "--train", shards, "--test", shards, "--protocols", "knn", "--knn-k", "3")
    evaluated = dcpipe(ws, *flags)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"eval {shards}: 100%" in evaluated.stderr
    assert dcpipe(ws, "-q", *flags).stderr == ""


def test_init_writes_the_commented_defaults_and_says_what_to_run_next(tmp_path):
    out = dcpipe(tmp_path, "init", "--method", "deepcluster")
    assert out.returncode == 0
    assert out.stdout.splitlines()[-1].startswith("next: dcpipe shard --src")
    assert (tmp_path / "dcpipe.toml").read_text() == template("deepcluster")
