"""An img2dataset output folder taken into a workspace: `dcpipe shard --src <folder of tars>`."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from support.cli import dcpipe
from support.img2dataset_output import img2dataset_folder
from support.imagefiles import photo
from support.workspaces import TINY

from dcpipe.pipeline.workspace import Workspace
from dcpipe.shards.manifest import load_manifest
from dcpipe.shards.reader import file_sha256, iter_shard, list_shards
from dcpipe.stages.shard import ShardSettings
from dcpipe.stages.shard import shard
from dcpipe.stages.sources.tables import SourceError

SHM = Path("/dev/shm")


def _json(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dcpipe.toml").write_text(TINY)
    return ws


def test_an_img2dataset_folder_is_adopted_counted_and_labelled(tmp_path):
    tars = img2dataset_folder(tmp_path / "i2d", n_shards=2, per_shard=12)
    ws = _workspace(tmp_path)
    adopted = _json(dcpipe(ws, "-q", "shard", "--json", "--src", str(tmp_path / "i2d")))
    assert (adopted["format"], adopted["shards_written"], adopted["written"]) == ("webdataset", 2, 24)
    shards = list_shards(ws / "shards")
    assert [s.name for s in shards] == ["000000", "000001"]
    for shard_info, tar in zip(shards, tars):  # the same bytes, verified as any shard of ours
        assert shard_info.sha256 == file_sha256(tar) and shard_info.n_samples == 12
        assert shard_info.path.stat().st_ino == tar.stat().st_ino  # linked, not copied
    assert [e["source"] for e in load_manifest(ws / "shards")["shards"]] == [str(t) for t in tars]
    collection = _json(dcpipe(ws, "status", "--json"))["collection"]
    assert (collection["shards"], collection["samples"], collection["rows"]) == (2, 24, 24)
    assert collection["rejected"] == 0
    clustered = dcpipe(ws, "-q", "cluster", "--round", "0")
    assert clustered.returncode == 0, clustered.stderr
    clusters = json.loads((ws / "rounds" / "0000" / "clusters.json").read_text())
    assert clusters["nmi_true"] is not None  # the json's `label` reached the feature store


def test_cls_members_label_the_samples_when_named(tmp_path):
    img2dataset_folder(tmp_path / "i2d", n_shards=1, per_shard=9, cls=True)
    shard(tmp_path / "i2d", tmp_path / "shards", ShardSettings(label_field="cls"))
    [info] = list_shards(tmp_path / "shards")
    assert info.classes == ("0", "1", "2") and info.label_field == "cls"
    samples = list(iter_shard(info.path, info.sha256, info.label_field))
    names = {"0": "cat", "1": "dog", "2": "panda"}  # the json's label says the same
    assert [names[s.label] for s in samples] == [s.meta["label"] for s in samples]


def test_a_later_shard_of_another_source_keeps_the_adopted_shards(tmp_path):
    img2dataset_folder(tmp_path / "i2d", n_shards=2, per_shard=5)
    photos = tmp_path / "photos" / "cat"
    photos.mkdir(parents=True)
    for i in range(3):
        (photos / f"{i}.jpg").write_bytes(photo(seed=i))
    ws = _workspace(tmp_path)
    _json(dcpipe(ws, "-q", "shard", "--json", "--src", str(tmp_path / "i2d")))
    _json(dcpipe(ws, "-q", "shard", "--json", "--src", str(tmp_path / "photos")))
    collection = _json(dcpipe(ws, "status", "--json"))["collection"]
    assert (collection["shards"], collection["samples"]) == (3, 13)
    names = [s.name for s in Workspace.at(ws).round_shards(0)]
    assert names == ["000000", "000001", "000002"]  # the adopted ones first, then the photos
    assert list_shards(ws / "shards")[2].n_samples == 3


def test_adopting_again_is_a_no_op_and_a_grown_folder_adds_its_new_tars(tmp_path):
    img2dataset_folder(tmp_path / "i2d", n_shards=2, per_shard=4)
    shards = tmp_path / "shards"
    shard(tmp_path / "i2d", shards)
    manifest = (shards / "manifest.jsonl").read_bytes()
    again = shard(tmp_path / "i2d", shards)
    assert (again["shards_written"], again["shards_skipped"]) == (0, 2)
    assert (shards / "manifest.jsonl").read_bytes() == manifest
    copy = tmp_path / "copy"  # the same tars through another path: the same bytes, skipped
    copy.mkdir()
    for tar in (tmp_path / "i2d").glob("*.tar"):
        (copy / tar.name).write_bytes(tar.read_bytes())
    assert shard(copy, shards)["shards_written"] == 0
    [new] = img2dataset_folder(tmp_path / "i2d", n_shards=1, per_shard=4, first=2)
    grown = shard(tmp_path / "i2d", shards)
    assert (grown["shards_written"], grown["shards_skipped"]) == (1, 2)
    assert list_shards(shards)[-1].sha256 == file_sha256(new)


def test_another_label_field_rewrites_the_entries_in_place(tmp_path):
    img2dataset_folder(tmp_path / "i2d", n_shards=2, per_shard=6, cls=True)
    shards = tmp_path / "shards"
    shard(tmp_path / "i2d", shards)
    before = list_shards(shards)
    relabelled = shard(tmp_path / "i2d", shards, ShardSettings(label_field="cls"))
    assert (relabelled["shards_relabelled"], relabelled["shards_written"]) == (2, 0)
    after = list_shards(shards)
    assert [(s.name, s.sha256) for s in after] == [(s.name, s.sha256) for s in before]
    assert {s.classes for s in before} == {("cat", "dog", "panda")}
    assert {s.classes for s in after} == {("0", "1", "2")}


def test_tars_copied_into_the_shards_folder_by_hand_are_refused_with_the_way_out(tmp_path):
    ws = _workspace(tmp_path)
    [tar] = img2dataset_folder(ws / "shards", n_shards=1, per_shard=3)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(photo())
    out = dcpipe(ws, "shard", "--src", str(photos))
    assert out.returncode == 2 and "00000.tar" in out.stderr and "adopt" in out.stderr
    assert not (ws / "shards" / "manifest.jsonl").exists()  # nothing hidden
    assert _json(dcpipe(ws, "status", "--json"))["collection"]["foreign_tars"] == 1
    assert "1 tars in shards/ that dcpipe did not write" in dcpipe(ws, "status").stdout


def test_an_unreadable_tar_stops_adoption_naming_it(tmp_path):
    tars = img2dataset_folder(tmp_path / "i2d", n_shards=2, per_shard=3)
    tars[1].write_bytes(tars[1].read_bytes()[:700])
    with pytest.raises(SourceError, match="00001.tar"):
        shard(tmp_path / "i2d", tmp_path / "shards")
    assert [s.name for s in list_shards(tmp_path / "shards")] == ["000000"]


@pytest.mark.skipif(not SHM.is_dir() or os.stat(SHM).st_dev == os.stat("/tmp").st_dev,
                    reason="needs /dev/shm on another file system than /tmp")
def test_tars_on_another_file_system_are_copied(tmp_path):
    source = Path(tempfile.mkdtemp(dir=SHM))
    try:
        tars = img2dataset_folder(source, n_shards=1, per_shard=3)
        stats = shard(source, tmp_path / "shards")
        [info] = list_shards(tmp_path / "shards")
        assert (stats["copied"], stats["linked"]) == (1, 0)
        assert info.path.stat().st_ino != tars[0].stat().st_ino
        assert info.sha256 == file_sha256(tars[0]) == file_sha256(info.path)
    finally:
        shutil.rmtree(source)
