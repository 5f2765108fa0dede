"""The training stage on real shards: outputs, round-to-round state, SIGKILL resume, 2-rank DDP."""
import json
import math
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from dcpipe.errors import FileFormatError
from dcpipe.shards.reader import ShardCorrupt
from dcpipe.stages.common.labels import load_labels, write_labels
from dcpipe.stages.common.models import build_model, load_model
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.train.balanced_sampler import BalancedSampler, cluster_sizes
from dcpipe.stages.train import TrainSettings
from dcpipe.stages.train.stage import TrainingDiverged, train

from support.damage import flip_in_member, flip_low_bit_of_weight, largest_weight
from support.labelled_shards import make_collection
from support.settings import with_settings
from support.torchrun import TWO_RANKS, output_or_fail
from support.train_kill import kill_at_first_checkpoint, launch

torch.set_num_threads(1)
K = 8
OPTIONS = {"width": 4, "input_size": 32, "batch_size": 16, "loss_every": 2,
           "checkpoint_every": 3, "seed": 1, "workers": 1, "progress": False}
run_train = with_settings(train, ModelSpec, TrainSettings)


def _collection(root, sizes, k=K, seed=0):
    rng = np.random.default_rng(seed)
    labels = [rng.integers(-1, k, n).astype(np.int32) for n in sizes]
    return make_collection(root, labels, k, image_size=16)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return _collection(tmp_path_factory.mktemp("train"), (120, 90, 100, 30))


@pytest.fixture(scope="module")
def round0(collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("round0")
    return out, run_train(*collection, out, **OPTIONS)


def _planned_draws(shards, labels_dir, k=K, world=1):
    sizes = cluster_sizes(shards, labels_dir, k)
    return sum(BalancedSampler(shards, labels_dir, sizes, seed=OPTIONS["seed"], rank=q,
                               world=world).planned_cluster_draws() for q in range(world))


def _final_draws(out):
    return torch.load(out / "ckpt" / "last.pt", weights_only=True)["tally"]["draws"].numpy()


def _state(path):
    return load_model(path)[0].state_dict()


def test_a_round_writes_model_optimiser_and_record(collection, round0):
    shards, labels_dir = collection
    out, record = round0
    assert record["steps"] == math.ceil(record["samples"] / 16)
    assert abs(record["samples"] - record["n_labelled"]) < 4 * math.sqrt(record["n_labelled"])
    assert json.loads((out / "train.json").read_text()) == record
    model, meta = load_model(out / "model.pt")
    assert meta["top_k"] == K and model.top.out_features == K
    optim = torch.load(out / "optim_body.pt", weights_only=True)
    assert len(optim["state"]) == len(model.body_parameters())  # momentum buffers kept
    assert np.array_equal(_final_draws(out), _planned_draws(shards, labels_dir))
    summary = record["cluster_draws"]
    assert summary["clusters_drawn"] == K and summary["min"] > 0.7 * summary["target"]
    assert [s for s, _ in record["loss_curve"]][-1] == record["steps"]
    assert record["timings"]["images_per_s"] > 0 and record["resumed_from_step"] is None
    # Complete: a second call returns the record and trains nothing.
    mtime = (out / "model.pt").stat().st_mtime_ns
    assert run_train(*collection, out, **OPTIONS) == record
    assert (out / "model.pt").stat().st_mtime_ns == mtime


def test_next_round_starts_from_the_model_and_body_optimiser(tmp_path, round0):
    out0, _ = round0
    shards, labels_dir = _collection(tmp_path / "data", (60, 50), k=5, seed=3)
    record = run_train(shards, labels_dir, tmp_path / "r1", model_path=out0 / "model.pt",
                   body_optim_path=out0 / "optim_body.pt", **OPTIONS)
    model = load_model(tmp_path / "r1" / "model.pt")[0]
    assert model.top.out_features == 5 and record["k"] == 5
    first_conv = "features.0.0.weight"
    assert not torch.equal(model.state_dict()[first_conv], _state(out0 / "model.pt")[first_conv])


def test_bad_inputs_fail_clearly(tmp_path, collection, round0):
    shards, labels_dir = collection
    out0, _ = round0
    unlabelled = replace(shards[0], index=99, name="000099")
    with pytest.raises(ValueError, match="no labels for shards"):
        run_train([*shards, unlabelled], labels_dir, tmp_path / "x", **OPTIONS)
    wide = build_model(ModelSpec("small", input_size=32, width=8), num_classes=K)  # round 0 had width 4
    optimiser = torch.optim.SGD(wide.body_parameters(), lr=0.1, momentum=0.9)
    wide(torch.zeros(2, 3, 32, 32)).sum().backward()
    optimiser.step()
    torch.save(optimiser.state_dict(), tmp_path / "wrong_optim.pt")
    with pytest.raises(ValueError, match="does not fit"):
        run_train(shards, labels_dir, tmp_path / "y", model_path=out0 / "model.pt",
              body_optim_path=tmp_path / "wrong_optim.pt", **OPTIONS)
    with pytest.raises(ValueError, match="input_size"):
        run_train(shards, labels_dir, tmp_path / "z", model_path=out0 / "model.pt",
              **{**OPTIONS, "input_size": 64})
    (tmp_path / "w" / "ckpt").mkdir(parents=True)
    shutil.copy(out0 / "ckpt" / "last.pt", tmp_path / "w" / "ckpt" / "last.pt")
    with pytest.raises(ValueError, match=r"other settings \(lr, seed\)"):
        run_train(shards, labels_dir, tmp_path / "w", **{**OPTIONS, "lr": 0.1, "seed": 2})


@pytest.mark.parametrize("head_init", ["random", "fitted"])
def test_sigkill_then_rerun_finishes_the_round_as_if_never_killed(tmp_path, collection, head_init):
    shards, labels_dir = collection
    options = {**OPTIONS, "batch_size": 8,  # ~38 steps: the kill lands well before the end
               "head_init": head_init}
    reference_out = tmp_path / "uninterrupted"
    reference = run_train(shards, labels_dir, reference_out, **options)
    out = tmp_path / "killed"
    proc = launch([sys.executable], shards[0].path.parent, labels_dir, out, options)
    killed_at = kill_at_first_checkpoint(proc, out)
    assert 0 < killed_at < reference["steps"]

    record = run_train(shards, labels_dir, out, **options)
    assert record["resumed_from_step"] >= killed_at
    for key in ("steps", "samples", "cluster_draws"):
        assert record[key] == reference[key]
    assert np.array_equal(_final_draws(out), _final_draws(reference_out))
    assert np.allclose([l for _, l in record["loss_curve"]],
                       [l for _, l in reference["loss_curve"]], rtol=1e-5)
    resumed, uninterrupted = _state(out / "model.pt"), _state(reference_out / "model.pt")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


@pytest.mark.parametrize("head_init", ["random", "fitted"])
def test_two_rank_ddp_with_unequal_ranks_finishes(tmp_path, head_init):
    # Rank 0 reads shards 0 and 2 (270 samples: batches above batch_size, split in micro-batches),
    # rank 1 shard 1 (4 samples: most of its batches are empty; a fitted top's fit takes its 4
    # samples, rank 0 its 200). Neither may hang the other.
    shards, labels_dir = _collection(tmp_path / "data", (150, 4, 120), seed=7)
    out = tmp_path / "ddp"
    proc = launch(TWO_RANKS, shards[0].path.parent, labels_dir, out,
                  {**OPTIONS, "head_init": head_init})
    _, stderr = output_or_fail(proc, 180, "the 2-rank DDP round")
    assert proc.returncode == 0, stderr[-3000:]
    record = json.loads((out / "train.json").read_text())
    per_rank = record["samples_per_rank"]
    assert record["world_size"] == 2 and per_rank[0] > 20 * per_rank[1]
    assert record["steps"] == math.ceil(sum(per_rank) / (2 * 16))
    # The two ranks together drew exactly what one process would have drawn.
    assert np.array_equal(_final_draws(out), _planned_draws(shards, labels_dir))
    assert np.array_equal(_final_draws(out), _planned_draws(shards, labels_dir, world=2))
    assert load_model(out / "model.pt")[0].top.out_features == K


def test_a_damaged_shard_stops_training_from_a_loader_worker_naming_it(tmp_path):
    shards, labels_dir = _collection(tmp_path, (40, 30))
    flip_in_member(shards[1].path, nth=5)
    with pytest.raises(ShardCorrupt, match="000001.tar") as raised:
        run_train(shards, labels_dir, tmp_path / "out", **OPTIONS)  # workers=1
    assert "Traceback" not in str(raised.value)
    assert not (tmp_path / "out" / "train.json").exists()


def test_a_damaged_checkpoint_is_refused(tmp_path, collection, round0):
    out0, _ = round0
    (tmp_path / "ckpt").mkdir()
    shutil.copy(out0 / "ckpt" / "last.pt", tmp_path / "ckpt" / "last.pt")
    state = torch.load(out0 / "ckpt" / "last.pt", weights_only=True)["model"]
    flip_low_bit_of_weight(tmp_path / "ckpt" / "last.pt", largest_weight(state))
    with pytest.raises(FileFormatError, match=r"last\.pt: .*damaged"):
        run_train(*collection, tmp_path, **OPTIONS)


def test_a_checkpoint_resumes_only_on_the_labels_it_was_trained_on(tmp_path, collection, round0,
                                                                   caplog):
    shards, labels_dir = collection
    out0, record0 = round0
    for out in (tmp_path / "same", tmp_path / "reclustered"):
        (out / "ckpt").mkdir(parents=True)
        shutil.copy(out0 / "ckpt" / "last.pt", out / "ckpt" / "last.pt")  # a finished run's
    same = run_train(shards, labels_dir, tmp_path / "same", **OPTIONS)
    assert same["resumed_from_step"] == record0["steps"]
    relabelled = tmp_path / "relabelled"
    write_labels(relabelled, [(s.name, *_shifted(labels_dir, s.name)) for s in shards], {"k": K})
    record = run_train(shards, relabelled / "labels", tmp_path / "reclustered", **OPTIONS)
    assert record["resumed_from_step"] is None and record["steps"] > 0
    assert "other labels" in caplog.text and "starts over" in caplog.text


def _shifted(labels_dir, name):
    """A shard's keys and its labels moved to the next cluster (as a new clustering would)."""
    keys, labels = load_labels(labels_dir, name)
    return keys, np.where(labels >= 0, (labels + 1) % K, -1).astype(np.int32)


def test_a_non_finite_loss_stops_training_with_no_model_and_no_checkpoint(collection, tmp_path):
    """lr 100 (the largest allowed) blows the loss up to NaN within a few steps on this set."""
    with pytest.raises(TrainingDiverged, match=r"diverged in round 0: the loss is nan by step \d+ "
                                                r"of \d+ \(lr 100.0\); no model written"):
        run_train(*collection, tmp_path, **{**OPTIONS, "lr": 100.0})
    assert not any((tmp_path / name).exists()
                   for name in ("model.pt", "model.json", "train.json", "ckpt/last.pt"))
