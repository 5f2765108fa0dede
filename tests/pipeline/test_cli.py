import json
import subprocess
import sys

import click
from click.testing import CliRunner

from dcpipe.pipeline.cli import handled
from dcpipe.pipeline.workspace import Workspace, WorkspaceError
from support.cli import dcpipe
from support.tiny_shards import add_shard


def test_status_json_has_the_documented_keys(tmp_path):
    add_shard(tmp_path / "shards", 0, n=3)
    add_shard(tmp_path / "shards", 1, n=2)
    out = dcpipe(tmp_path, "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert set(status) == {"workspace", "config", "collection", "rounds"}
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
