import json

import pytest

from dcpipe.pipeline.workspace import Workspace, WorkspaceError
from support.tiny_shards import add_shard


def test_workspace_comes_from_flag_or_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DCPIPE_WORKSPACE", str(tmp_path / "env"))
    assert Workspace.at().root == tmp_path / "env"
    assert Workspace.at(tmp_path / "flag").root == tmp_path / "flag"
    assert Workspace.at().round(7).path.name == "0007"


def test_round_shards_are_fixed_when_the_round_starts(tmp_path):
    ws = Workspace(tmp_path)
    add_shard(ws.shards_dir, 0)
    assert [s.name for s in ws.round_shards(0)] == ["000000"]
    add_shard(ws.shards_dir, 1)  # arrives later: joins the next round, not this one
    assert [s.name for s in ws.round_shards(0)] == ["000000"]
    assert [s.name for s in ws.round_shards(1)] == ["000000", "000001"]
    assert json.loads(ws.round(0).shard_list.read_text()) == ["000000"]


def test_round_without_shards_is_a_clear_error(tmp_path):
    with pytest.raises(WorkspaceError, match="dcpipe shard"):
        Workspace(tmp_path).round_shards(0)


def test_init_config_keeps_an_existing_file(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.init_config() is True
    ws.config_path.write_text("seed = 5\n")
    assert ws.init_config() is False
    assert ws.config().seed == 5
