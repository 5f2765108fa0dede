import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from dcpipe.shards.manifest import add_entry
from dcpipe.shards.naming import make_key
from dcpipe.shards.reader import ShardCorrupt, iter_shard, list_shards
from dcpipe.shards.writer import ShardWriter
from dcpipe.stages.extract import ExtractSettings
from dcpipe.stages.extract.stage import StoreMismatch, extract
from dcpipe.stages.common.featurestore import open_store
from dcpipe.stages.common.images import open_rgb
from dcpipe.stages.common.models import eval_transform, random_init, save_model
from dcpipe.stages.common.modelspec import ModelSpec
from support.damage import flip_in_member
from support.settings import pop_settings
from support.sample_shards import make_collection, synthetic_jpeg
from support.torchrun import TWO_RANKS, run_in_group

torch.set_num_threads(1)
SUPPORT = Path(__file__).parents[2] / "support"
# a narrow small net keeps the tests fast; everything else is the real thing
# fp32: the stored rows are compared with the model's own features; bf16 has a test of its own
OPTIONS = {"arch": "small", "width": 16, "input_size": 32, "seed": 7, "precision": "fp32",
           "progress": False}
ARRAYS = ("features", "valid", "shard", "row", "true_label", "shard_offset", "shard_count")


def _run(shards, store, **overrides):
    options = {**OPTIONS, "batch_size": 8, "chunk_rows": 16, "workers": 0, **overrides}
    return extract(shards, store, pop_settings(ModelSpec, options),
                   pop_settings(ExtractSettings, options), **options)


def _child(shards_dir, store, **overrides):
    options = {**OPTIONS, "batch_size": 8, "chunk_rows": 16, "workers": 2, **overrides,
               "shards_dir": str(shards_dir), "store": str(store)}
    return [str(SUPPORT / "extract_runner.py"), json.dumps(options)]


def _assert_same_store(a, b):
    za, zb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    for name in ARRAYS:
        assert np.array_equal(za[name][:], zb[name][:]), name
    assert dict(za.attrs) == dict(zb.attrs)
    for folder in ("keys", "done"):
        files = sorted(p.name for p in (Path(a) / folder).iterdir())
        assert files == sorted(p.name for p in (Path(b) / folder).iterdir())
        for name in files:
            assert (Path(a) / folder / name).read_bytes() == (Path(b) / folder / name).read_bytes()


def test_store_rows_keys_and_ranges_match_the_shards(tmp_path):
    shards = make_collection(tmp_path / "shards", 3, [21, 0, 13])
    result = _run(shards, tmp_path / "f.zarr", workers=2)
    assert result["complete"] and result["samples"] == 34 and result["failed"] == 0
    store = open_store(tmp_path / "f.zarr")
    assert store.attrs["class_names"] == ["cat", "dog", "panda"]
    assert store.shard_count.tolist() == [21, 0, 13]
    assert store.shard_offset.tolist() == [0, 32, 32]  # blocks start on chunk boundaries
    assert store.n_rows == 48 and store.group["features"].chunks == (16, 256)
    model = random_init(ModelSpec("small", width=16, input_size=32), 7).eval()  # round 0, seed 7
    transform = eval_transform(32)
    for s, info in enumerate(shards):
        samples = list(iter_shard(info.path))
        start, stop = store.shard_rows(s)
        assert store.keys(s) == [sample.key for sample in samples]
        assert store.group["shard"][start:stop].tolist() == [s] * len(samples)
        assert store.group["row"][start:stop].tolist() == list(range(len(samples)))
        assert store.group["valid"][start:stop].all()
        labels = [store.attrs["class_names"][i] for i in store.group["true_label"][start:stop]]
        assert labels == [sample.meta["label"] for sample in samples]
        assert store.done_record(s)["n_valid"] == len(samples)
        if samples:  # the stored rows are the features of these very images, in tar order
            images = torch.stack([transform(open_rgb(x.image)) for x in samples])
            with torch.no_grad():
                expected = model.embed(images).numpy()
            np.testing.assert_allclose(store.group["features"][start:stop], expected,
                                       rtol=2e-3, atol=1e-4)
    padding = ~store.group["valid"][:].astype(bool)
    assert padding.sum() == 48 - 34
    assert (store.group["row"][:][padding] == -1).all()
    assert not store.group["features"][:][padding].any()


def test_plain_zarr_reads_the_store_without_dcpipe(tmp_path):
    shards = make_collection(tmp_path / "shards", 2, 5)
    _run(shards, tmp_path / "f.zarr", dtype="float32")
    code = ("import json, sys, zarr; g = zarr.open(sys.argv[1], mode='r'); "
            "f = g['features'][:]; v = g['valid'][:]; o = g['shard_offset'][:]; "
            "k = json.load(open(sys.argv[1] + '/keys/000001.json')); "
            "print(json.dumps([str(f.dtype), list(f.shape), int(v.sum()), o.tolist(), k[0], "
            "g.attrs['complete'], sorted(g.array_keys()), 'dcpipe' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.zarr")],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    assert json.loads(out.stdout) == ["float32", [10, 256], 10, [0, 5], make_key(1, 0), True,
                                      sorted(ARRAYS), False]


def _jpeg_with_size(width, height):
    """A real small JPEG whose header claims another size (bomb / absurd aspect)."""
    data = bytearray(synthetic_jpeg(np.random.default_rng(0), 0, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_bad_members_and_a_truncated_tar_are_recorded_not_dropped(tmp_path):
    shards_dir = tmp_path / "shards"
    good = synthetic_jpeg(np.random.default_rng(1), 1)
    bad = {1: b"not an image at all", 2: good[: len(good) // 2], 3: _jpeg_with_size(10000, 10000),
           4: _jpeg_with_size(16, 900)}
    make_collection(shards_dir, 3, [6, 0, 40])
    writer = ShardWriter(shards_dir, 0)  # shard 0 replaced by one with bad members
    for row in range(6):
        writer.add(make_key(0, row), bad.get(row, good), {"label": "dog"})
    add_entry(shards_dir, writer.commit({}, entry_extra={"classes": ["dog"]}))
    tar = shards_dir / "000002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    shards = list_shards(shards_dir)
    shards[2] = replace(shards[2], sha256=None, bytes=None)  # as another tool's tar (no digest)
    result = _run(shards, tmp_path / "f.zarr")
    assert result["complete"]
    store = open_store(tmp_path / "f.zarr")
    record = store.done_record(0)
    reasons = {f["row"]: f["reason"] for f in record["failed"]}
    assert sorted(reasons) == [1, 2, 3, 4] and record["n_valid"] == 2
    assert "undecodable" in reasons[1] and "undecodable" in reasons[2]
    assert "too large" in reasons[3] and "aspect" in reasons[4]
    assert store.group["valid"][0:6].tolist() == [1, 0, 0, 0, 0, 1]
    assert store.keys(0) == [make_key(0, r) for r in range(6)]  # failed rows keep their keys
    cut = store.done_record(2)
    start, stop = store.shard_rows(2)
    lost = [f["row"] for f in cut["failed"]]
    assert 0 < cut["n_valid"] < 40 and lost == list(range(cut["n_valid"], 40))
    assert "unreadable" in cut["failed"][0]["reason"]
    assert store.keys(2)[cut["n_valid"]:] == [None] * len(lost)
    assert store.group["valid"][start:stop].sum() == cut["n_valid"]
    assert result["failed"] == 4 + len(lost)


def test_rerun_skips_done_shards_and_refuses_a_different_model(tmp_path):
    shards = make_collection(tmp_path / "shards", 2, 6)
    _run(shards, tmp_path / "f.zarr")
    again = _run(shards, tmp_path / "f.zarr", workers=2)
    assert (again["shards_skipped"], again["shards_done"], again["complete"]) == (2, 0, True)
    with pytest.raises(StoreMismatch, match="model"):
        _run(shards, tmp_path / "f.zarr", seed=8)


def test_a_saved_model_gives_the_features_of_the_model_it_saved(tmp_path):
    shards = make_collection(tmp_path / "shards", 2, 5)
    model = random_init(ModelSpec("small", width=16, input_size=32), 7, num_classes=4)
    save_model(tmp_path / "model.pt", model, {"round": 0})
    _run(shards, tmp_path / "init.zarr")
    _run(shards, tmp_path / "loaded.zarr", model_path=tmp_path / "model.pt", seed=None,
         arch="vgg16", width=0, input_size=99)  # ignored: the checkpoint says what the model is
    init, loaded = open_store(tmp_path / "init.zarr"), open_store(tmp_path / "loaded.zarr")
    assert np.array_equal(init.group["features"][:], loaded.group["features"][:])
    assert loaded.attrs["model"]["source"] == str(tmp_path / "model.pt")
    assert loaded.attrs["model"]["round"] == 0 and loaded.attrs["model"]["width"] == 16
    shutil.copy(tmp_path / "model.pt", tmp_path / "moved.pt")  # same model, another path
    again = _run(shards, tmp_path / "loaded.zarr", model_path=tmp_path / "moved.pt")
    assert again["shards_skipped"] == 2
    with pytest.raises(FileNotFoundError):
        _run(shards, tmp_path / "none.zarr", model_path=tmp_path / "missing.pt")


def test_sigkill_then_rerun_gives_the_uninterrupted_store(tmp_path):
    shards = make_collection(tmp_path / "shards", 12, 40, size=48, distinct=30)
    _run(shards, tmp_path / "ref.zarr")
    store = tmp_path / "f.zarr"
    child = subprocess.Popen([sys.executable, *_child(tmp_path / "shards", store)],
                             stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(store.glob("done/0*.json")):
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_at_kill = len(list(store.glob("done/0*.json")))
    assert 0 < done_at_kill < 12 and not open_store(store).complete
    rerun = subprocess.run([sys.executable, *_child(tmp_path / "shards", store)],
                           capture_output=True, text=True, check=True)
    assert json.loads(rerun.stdout)["shards_skipped"] == done_at_kill
    _assert_same_store(tmp_path / "ref.zarr", store)


def test_torchrun_two_ranks_equal_the_single_process_store(tmp_path):
    shards = make_collection(tmp_path / "shards", 5, [9, 17, 3, 12, 8])
    _run(shards, tmp_path / "ref.zarr")
    store = tmp_path / "f.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = run_in_group([*TWO_RANKS, *_child(tmp_path / "shards", store, workers=1)], 120,
                       "the 2-rank extract", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert sorted((r["rank"], r["shards_done"], r["complete"]) for r in results) == [
        (0, 3, True), (1, 2, True)]
    _assert_same_store(tmp_path / "ref.zarr", store)


def test_bf16_features_are_the_fp32_ones_to_bf16_precision_and_the_store_says_which(tmp_path):
    shards = make_collection(tmp_path / "shards", 1, 12)
    _run(shards, tmp_path / "fp32.zarr")
    _run(shards, tmp_path / "bf16.zarr", precision="bf16")
    fp32, bf16 = open_store(tmp_path / "fp32.zarr"), open_store(tmp_path / "bf16.zarr")
    a = fp32.group["features"][:12].astype(np.float32)
    b = bf16.group["features"][:12].astype(np.float32)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(a, b)
    assert (fp32.attrs["model"]["precision"], bf16.attrs["model"]["precision"]) == ("fp32", "bf16")
    with pytest.raises(StoreMismatch, match="model"):  # a store is never finished in the other
        _run(shards, tmp_path / "fp32.zarr", precision="bf16")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_shard_stops_extraction_uncommitted_and_a_restored_one_finishes(tmp_path,
                                                                                  workers):
    shards = make_collection(tmp_path / "shards", 3, 6)
    good = shards[1].path.read_bytes()
    flip_in_member(shards[1].path, nth=2)
    with pytest.raises(ShardCorrupt, match="000001.tar") as raised:
        _run(shards, tmp_path / "f.zarr", workers=workers)
    assert "Traceback" not in str(raised.value)  # raised here as the worker raised it
    assert not open_store(tmp_path / "f.zarr").is_done(1)
    shards[1].path.write_bytes(good)
    assert _run(shards, tmp_path / "f.zarr", workers=workers)["complete"]
