"""`embed`: features of an image set to .npy or zarr, keys beside them, written atomically."""

import json

import numpy as np
import pytest
import torch
import zarr

from dcpipe.shards.reader import iter_shard, list_shards
from dcpipe.stages.evaluate.embed import embed
from dcpipe.stages.common.models import build_model, eval_transform, save_model
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.common.images import open_rgb
from support.sample_shards import make_collection

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    make_collection(root, 2, [9, 5], seed=2)
    return root


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, build_model(ModelSpec("small", input_size=32, width=8), seed=1), {"round": 2})
    return path


def test_npy_rows_are_the_models_features_in_source_order(shards, model_path, tmp_path):
    out = tmp_path / "feats.npy"
    summary = embed(shards, out, model_path=model_path, batch_size=4, workers=0)
    features = np.load(out, allow_pickle=False)
    samples = [(info.name, s) for info in list_shards(shards) for s in iter_shard(info.path)]
    model = build_model(ModelSpec("small", input_size=32, width=8), seed=1).eval()
    images = torch.stack([eval_transform(32)(open_rgb(s.image)) for _, s in samples])
    with torch.no_grad():
        expected = model.embed(images).numpy()
    assert features.dtype == np.float32 and features.shape == (14, 128)
    assert np.allclose(features, expected, atol=1e-5)
    keys = json.loads((tmp_path / "feats.keys.json").read_text())
    assert keys["keys"] == [f"{name}/{s.key}" for name, s in samples]  # unique across shards
    assert keys["model"]["round"] == 2
    assert summary["rows"] == 14 and summary["dim"] == 128
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.keys.json", "feats.npy"]


def test_zarr_store_equals_npy_and_opens_with_plain_zarr(shards, model_path, tmp_path):
    embed(shards, tmp_path / "a.npy", model_path=model_path, batch_size=4, workers=0)
    embed(shards, tmp_path / "b.zarr", model_path=model_path, batch_size=4, workers=2)
    group = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert np.array_equal(group["features"][:], np.load(tmp_path / "a.npy"))
    assert group.attrs["rows"] == 14
    keys = json.loads((tmp_path / "b.zarr" / "keys.json").read_text())
    assert keys["keys"] == json.loads((tmp_path / "a.keys.json").read_text())["keys"]


def test_rerun_replaces_a_store_and_failures_are_listed(tmp_path, model_path):
    folder = tmp_path / "images" / "x"
    folder.mkdir(parents=True)
    (folder / "bad.jpg").write_bytes(b"garbage")
    make_collection(tmp_path / "one", 1, 2, seed=0)
    (folder / "good.jpg").write_bytes(next(iter_shard(list_shards(tmp_path / "one")[0].path)).image)
    out = tmp_path / "out.zarr"
    for _ in range(2):
        summary = embed(tmp_path / "images", out, model_path=model_path, workers=0)
    assert summary["rows"] == 1 and summary["failed"] == 1
    keys = json.loads((out / "keys.json").read_text())
    assert keys["keys"] == ["x/good.jpg"]  # the path inside the folder, not as typed
    assert keys["failed"][0][0] == "x/bad.jpg"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
