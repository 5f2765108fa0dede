"""Stored data is verified before it is trusted: damaged files stop a command (exit 2, named),
and `dcpipe verify` lists every one of them."""
import re
import shutil

import pytest
import torch

from dcpipe.pipeline.verify import verify
from dcpipe.pipeline.workspace import Workspace
from support.cli import dcpipe
from support.damage import cut, first_chunk, flip_byte, flip_in_member, flip_low_bit_of_weight
from support.damage import largest_weight
from support.workspaces import tiny_workspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workspace whose round 0 is complete (extract, cluster, train)."""
    ws = tiny_workspace(tmp_path_factory.mktemp("verify") / "ws")
    out = dcpipe(ws, "-q", "run", "--rounds", "1")
    assert out.returncode == 0, out.stderr
    return ws


@pytest.fixture
def ws(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "ws")


def _untrain(ws):
    """Round 0 as if its training had not run yet (it must read the shards again)."""
    r0 = ws / "rounds" / "0000"
    for name in ("train.json", "model.pt", "model.json", "optim_body.pt", "ckpt"):
        shutil.rmtree(r0 / name) if (r0 / name).is_dir() else (r0 / name).unlink()


def test_verify_passes_a_good_workspace(trained):
    out = dcpipe(trained, "-q", "verify")
    assert out.returncode == 0, out.stderr
    assert "all good" in out.stdout and "2 shards, 1 feature stores, 1 label indexes" in out.stdout


def test_a_flipped_byte_in_a_jpeg_member_stops_run_and_verify_names_the_shard(ws):
    flip_in_member(ws / "shards" / "000001.tar", nth=7)
    shutil.rmtree(ws / "rounds")
    out = dcpipe(ws, "-q", "run", "--rounds", "1")
    assert out.returncode == 2 and "000001.tar" in out.stderr and "sha256" in out.stderr
    checked = dcpipe(ws, "-q", "verify")
    assert checked.returncode == 2 and checked.stdout.splitlines() == [
        f"{ws / 'shards' / '000001.tar'}: sha256 differs from its manifest entry (altered or damaged)"]


def test_a_flipped_byte_stops_training_from_its_loader_worker(ws):
    flip_in_member(ws / "shards" / "000000.tar", nth=3)
    _untrain(ws)
    out = dcpipe(ws, "-q", "train", "--round", "0")  # [train] workers = 1
    assert out.returncode == 2 and "000000.tar" in out.stderr and "Traceback" not in out.stderr
    assert not (ws / "rounds" / "0000" / "train.json").exists()


@pytest.mark.parametrize("damage, says", [(lambda p: p.unlink(), "is missing"),
                                          (cut, r"has \d+ bytes, its manifest entry \d+")])
def test_a_missing_or_short_tar_stops_the_round_naming_it(ws, damage, says):
    damage(ws / "shards" / "000001.tar")
    _untrain(ws)
    out = dcpipe(ws, "-q", "train", "--round", "0")
    assert out.returncode == 2 and re.search(f"000001.tar {says}", out.stderr), out.stderr


def _flip_chunk(ws):
    chunk = first_chunk(ws / "rounds" / "0000" / "features.zarr", "features")
    flip_byte(chunk, chunk.stat().st_size // 2)
    return "features.zarr/features rows 0:"


def _delete_valid_chunk(ws):
    first_chunk(ws / "rounds" / "0000" / "features.zarr", "valid").unlink()
    return "features.zarr/valid/c/0 is missing"


def _change_labels(ws):
    path = ws / "rounds" / "0000" / "labels" / "000001.keys.json"
    path.write_text(path.read_text().replace("000001000003", "000001000004", 1))
    return "labels/000001.keys.json does not match"


def _flip_model(ws):
    path = ws / "rounds" / "0000" / "model.pt"
    flip_low_bit_of_weight(path, largest_weight(torch.load(path, weights_only=True)["state_dict"]))
    return "model.pt: its contents do not match"


@pytest.mark.parametrize("damage", [_flip_chunk, _delete_valid_chunk, _change_labels, _flip_model])
def test_verify_names_each_damaged_file(ws, damage):
    says = damage(ws)
    result = verify(Workspace.at(ws), progress=False)
    assert len(result.problems) == 1 and says in result.problems[0], result.problems
