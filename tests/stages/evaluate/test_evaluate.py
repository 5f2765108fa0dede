"""`evaluate` end to end on small synthetic image sets (real shards, folders, CSVs, models)."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from dcpipe.shards.reader import iter_shard, list_shards
from dcpipe.stages.evaluate import EvalSettings
from dcpipe.stages.evaluate import stage
from dcpipe.stages.common.models import build_model, save_model
from dcpipe.stages.common.modelspec import ModelSpec
from support.sample_shards import make_collection
from support.settings import with_settings

torch.set_num_threads(1)
evaluate = with_settings(stage.evaluate, ModelSpec, EvalSettings)
compare_random = with_settings(stage.compare_random, EvalSettings)
TINY = {"width": 8, "probe_dims": 256, "workers": 0, "batch_size": 16}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    make_collection(root / "train", 2, 24, seed=1)
    make_collection(root / "test", 1, 24, seed=2)
    return root


def export_folder(shards_dir, out):
    """The same images as an ImageNet-style folder, `out/<class>/<key>.jpg`."""
    for shard in list_shards(shards_dir):
        for sample in iter_shard(shard.path):
            path = out / sample.meta["label"] / f"{sample.key}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(sample.image)
    return out


def scores(result):
    return {k: v for k, v in result.items() if k not in ("seconds", "train", "test")}


def test_every_protocol_on_separable_synthetic_classes(sets):
    result = evaluate(sets / "train", sets / "test", **TINY)
    assert list(result["linear"]) == ["conv1", "conv2", "conv3", "conv4", "conv5", "penultimate"]
    # stripe direction and frequency differ by class: frozen random features separate them
    assert result["linear"]["conv1"]["top1"] == 1.0
    assert result["linear"]["penultimate"]["top1"] == 1.0
    assert result["knn"]["top1"] == 1.0 and result["knn"]["k"] == 20
    assert result["kmeans"]["k"] == 3 and 0 <= result["kmeans"]["nmi"] <= 1
    assert result["train"]["images"] == 48 and result["test"]["images"] == 24
    assert result["classes"] == 3 and result["model"]["random_init"]
    assert all(p["dims"] <= 2 * 256 for p in result["linear"].values() if p["pool"])
    json.dumps(result)  # plain JSON types, ready for eval.json


def test_random_baseline_is_reproducible_and_seed_dependent(sets):
    first = evaluate(sets / "train", sets / "test", protocols=("kmeans",), **TINY)
    again = evaluate(sets / "train", sets / "test", protocols=("kmeans",), **TINY)
    other = evaluate(sets / "train", sets / "test", protocols=("kmeans",), seed=5, **TINY)
    assert scores(first) == scores(again)
    assert first["model"]["seed"] == 0 and other["model"]["seed"] == 5
    assert "linear" not in first and "train" not in first


def test_folder_and_csv_sources_match_shards(sets, tmp_path):
    folder = export_folder(sets / "test", tmp_path / "folder")
    table = tmp_path / "list.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for image in sorted(folder.rglob("*.jpg")):
            writer.writerow([image, image.parent.name])
    options = dict(protocols=("knn", "linear"), layers="conv2,penultimate", **TINY)
    from_shards = evaluate(sets / "train", sets / "test", **options)
    from_folder = evaluate(sets / "train", folder, **options)
    from_csv = evaluate(sets / "train", table, **options)
    assert scores(from_shards) == scores(from_folder) == scores(from_csv)
    assert list(from_csv["linear"]) == ["conv2", "penultimate"]


def test_unreadable_and_unlabelled_images_are_counted(sets, tmp_path):
    folder = export_folder(sets / "test", tmp_path / "folder")
    (folder / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    shutil.copy(next(folder.rglob("*.jpg")), folder / "loose.jpg")  # no class folder
    result = evaluate(sets / "train", folder, protocols=("knn",), **TINY)
    assert result["test"]["images"] == 24
    assert result["test"]["failed"] == 1 and result["test"]["unlabelled"] == 1
    assert result["test"]["failures"][0][0].endswith("broken.jpg")


def test_max_train_draws_from_every_class_of_a_class_ordered_folder(sets, tmp_path):
    folder = export_folder(sets / "train", tmp_path / "folder")  # read class by class
    result = evaluate(folder, sets / "test", protocols=("knn",), max_train=12, **TINY)
    assert result["train"]["images"] == 12 and result["classes"] == 3


def test_a_saved_model_is_evaluated_with_its_own_architecture(sets, tmp_path):
    path = tmp_path / "model.pt"
    save_model(path, build_model(ModelSpec("small", input_size=32, width=8), seed=3), {"round": 4})
    result = evaluate(sets / "train", sets / "test", model_path=path, protocols=("knn",),
                      arch="alexnet", workers=0)
    # the checkpoint says which round and network it is, whatever the caller's spec
    assert result["model"]["round"] == 4 and result["model"]["width"] == 8
    assert not result["model"]["random_init"]


def test_compare_random_evaluates_a_like_random_init_on_the_same_images(sets, tmp_path):
    path = tmp_path / "model.pt"
    save_model(path, build_model(ModelSpec("small", input_size=32, width=8), seed=3), {"round": 2})
    both = compare_random(sets / "train", sets / "test", model_path=path, seed=7,
                          protocols=("knn",), max_train=30, workers=0)
    (trained_label, trained), (random_label, baseline) = both.items()
    assert trained_label == "round 2" and random_label == "random init (seed 7)"
    assert baseline["model"]["width"] == 8 and baseline["model"]["random_init"]
    assert trained["train"] == baseline["train"]  # the same subset of training images


def test_retrieval_finds_exact_copies_first(sets, tmp_path):
    # each query's only relevant database image is itself: it ranks first, so mAP = 1
    keys = [s.key for s in iter_shard(list_shards(sets / "test")[0].path)]
    folder = export_folder(sets / "test", tmp_path / "images")
    paths = {p.stem: p for p in folder.rglob("*.jpg")}
    queries, database = tmp_path / "q.csv", tmp_path / "db.csv"
    for table, chosen in ((queries, keys[:4]), (database, keys)):
        with open(table, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows([paths[k], k] for k in chosen)
    result = evaluate(None, None, protocols=("retrieval",), query_src=queries,
                      database_src=database, **TINY)
    assert result["retrieval"] == {"map": 1.0, "queries": 4, "database": 24}


@pytest.mark.parametrize("kwargs,message", [
    ({"protocols": ("linear", "svm")}, "unknown protocols"),
    ({"protocols": ("retrieval",)}, "query and database"),
    ({"layers": "conv9"}, "unknown layers"),
])
def test_bad_requests_are_refused_clearly(sets, kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate(sets / "train", sets / "test", **{**TINY, **kwargs})


def test_missing_training_set_is_refused(sets):
    with pytest.raises(ValueError, match="needs a training set"):
        evaluate(None, sets / "test", protocols=("knn",), **TINY)
