"""[train] bn_images: the saved model's BatchNorm statistics recomputed over a sample of the
round's images (stages/train/running_stats.py), alone, in a round, after a kill, on two ranks."""
import json
import random
import sys

import numpy as np
import pytest
import torch

from dcpipe.stages.common.distributed import ProcessGroup
from dcpipe.stages.common.models import build_model, eval_transform, load_model
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.common.precision import autocast_dtype
from dcpipe.stages.common.seeds import Domain, int_seed
from dcpipe.stages.train.running_stats import READ_FACTOR, batchnorms, recompute, sample_images
from support.labelled_shards import make_collection
from support.torchrun import TWO_RANKS, output_or_fail
from support.train_kill import kill_at_first_checkpoint
from support.v2_round import OPTIONS, launch_v2, make_heads, run_v2

torch.set_num_threads(1)
ONE_RANK = ProcessGroup(0, 1)
BN = {"bn_images": 64}


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    return make_heads(tmp_path_factory.mktemp("v2"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    rng = np.random.default_rng(3)
    found, _ = make_collection(tmp_path_factory.mktemp("bn"), [rng.integers(0, 6, n) for n in
                                                              (40, 30, 50, 20)], 6, image_size=16)
    return found


def _model() -> torch.nn.Module:
    return build_model(ModelSpec(sobel=False, width=4, projection=8, input_size=16))


def test_a_small_sample_reads_few_shards_and_is_a_function_of_the_seed(shards):
    assert READ_FACTOR * 4 < min(s.n_samples for s in shards)
    picked = sample_images(shards, 4, random.Random(7))
    assert len(picked) == 4 and len({s.key for s in picked}) == 4
    assert len({s.key[:6] for s in picked}) == 1  # 4 * READ_FACTOR rows: the first shard read
    assert [s.key for s in sample_images(shards, 4, random.Random(7))] == [s.key for s in picked]
    everything = sample_images(shards, 1000, random.Random(0))
    assert sorted(s.key for s in everything) == sorted(
        s.key for s in sample_images(shards, 140, random.Random(1)))
    assert len(everything) == 140


def test_statistics_are_the_plain_average_of_the_batches_whatever_they_were(shards):
    images = [s.image for s in sample_images(shards, 96, random.Random(0))]
    seen = {}
    model = _model()
    norms = batchnorms(model)
    for m in norms:  # what each BatchNorm is given, batch by batch
        m.register_forward_hook(lambda m, inputs, out: seen.setdefault(m, []).append(inputs[0]))
        m.running_mean.fill_(5.0)  # training's statistics: must not leak into the result
        m.num_batches_tracked.fill_(1000)
    batches = recompute(model, images, eval_transform(16), 32, ONE_RANK)
    assert batches == 3 and not model.training
    for m in norms:
        dims = [0, *range(2, seen[m][0].dim())]
        means = torch.stack([x.mean(dim=dims) for x in seen[m]])
        variances = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1) for x in seen[m]])
        assert torch.allclose(m.running_mean, means.mean(0), rtol=1e-4, atol=1e-5)
        assert torch.allclose(m.running_var, variances.mean(0), rtol=1e-4, atol=1e-6)
        assert m.num_batches_tracked.item() == 3 and m.momentum == 0.1


def test_too_few_images_leave_the_statistics_as_they_were(shards):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image = sample_images(shards, 1, random.Random(0))[0].image
    assert recompute(model, [image], eval_transform(16), 32, ONE_RANK) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _weights_and_statistics(path):
    state = load_model(path)[0].state_dict()
    stats = {k for k in state if "running_" in k}
    return ({k: v for k, v in state.items() if k not in stats and "num_batches" not in k},
            {k: state[k] for k in stats})


def test_a_round_recomputes_after_training_which_it_leaves_alone(heads, tmp_path):
    plain = run_v2(heads, tmp_path / "plain")
    record = run_v2(heads, tmp_path / "bn", **BN)
    assert plain["bn_batches"] == 0 and record["bn_batches"] == 4  # 64 images, batches of 16
    assert record["loss_curve"] == plain["loss_curve"]
    weights, stats = _weights_and_statistics(tmp_path / "bn" / "model.pt")
    plain_weights, plain_stats = _weights_and_statistics(tmp_path / "plain" / "model.pt")
    assert all(torch.equal(weights[k], plain_weights[k]) for k in weights)
    assert not any(torch.allclose(stats[k], plain_stats[k]) for k in stats)


def test_sigkill_then_rerun_recomputes_the_same_statistics(heads, tmp_path):
    options = {**OPTIONS, **BN, "batch_size": 8, "checkpoint_every": 2}
    reference = run_v2(heads, tmp_path / "uninterrupted", **BN, batch_size=8, checkpoint_every=2)
    out = tmp_path / "killed"
    proc = launch_v2([sys.executable], heads, out, options)
    assert 0 < kill_at_first_checkpoint(proc, out) < reference["steps"]
    assert run_v2(heads, out, **BN, batch_size=8, checkpoint_every=2)["bn_batches"] == 8
    resumed = load_model(out / "model.pt")[0].state_dict()
    uninterrupted = load_model(tmp_path / "uninterrupted" / "model.pt")[0].state_dict()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_two_ranks_average_their_own_samples_weighted_by_batches(heads, tmp_path):
    shards = heads[0]
    proc = launch_v2(TWO_RANKS, heads, tmp_path, {**OPTIONS, **BN})
    _, stderr = output_or_fail(proc, 180, "the 2-rank round with bn_images")
    assert proc.returncode == 0, stderr[-3000:]
    record = json.loads((tmp_path / "train.json").read_text())
    saved, _ = load_model(tmp_path / "model.pt")
    rows = sum(s.n_samples for s in shards)
    expected, counts = {}, []
    for rank in range(2):  # what each rank computes alone, from its shards and its seed
        mine = shards[rank::2]
        rng = random.Random(int_seed(OPTIONS["seed"], OPTIONS["round_index"], Domain.BN_SAMPLE, rank))
        picked = sample_images(mine, round(64 * sum(s.n_samples for s in mine) / rows), rng)
        model, _ = load_model(tmp_path / "model.pt")
        counts.append(recompute(model, [s.image for s in picked], eval_transform(32),
                                OPTIONS["batch_size"], ONE_RANK, autocast_dtype("auto", torch.device("cpu"))))
        for k, v in model.state_dict().items():
            if "running_" in k:
                expected[k] = expected.get(k, 0) + v * counts[-1]
    assert record["bn_batches"] == sum(counts) and min(counts) > 0
    state = saved.state_dict()
    for k, v in expected.items():
        assert torch.allclose(state[k], v / sum(counts), rtol=1e-4, atol=1e-6), k
