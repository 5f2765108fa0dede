"""DeepCluster-v2 training: fixed prototypes, multi-crop targets, the cosine schedule under
kill and resume, and a 2-rank round."""
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dcpipe.stages.common.labels import LabelsError
from dcpipe.stages.common.models import (build_model, denormalize_batch, load_model,
                                        normalize_floats)
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.train import TrainSettings
from dcpipe.stages.train.balanced_sampler import BalancedSampler, cluster_sizes
from dcpipe.stages.train.batches import MergedBatches, open_streams
from dcpipe.stages.train.multicrop import MultiCrop
from dcpipe.stages.train.objectives import PrototypeMatching
from dcpipe.stages.train.schedule import lr_at
from support.labelled_shards import label_of_pixels
from support.train_kill import kill_at_first_checkpoint
from support.torchrun import TWO_RANKS, output_or_fail
from support.v2_round import DIM, K, OPTIONS, launch_v2, make_heads, run_v2

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    return make_heads(tmp_path_factory.mktemp("v2"))


def _prototype(path) -> torch.Tensor:
    """A centroid file as the prototypes hold it: rows on the unit sphere."""
    return torch.nn.functional.normalize(torch.from_numpy(np.load(path)), dim=1)


def test_prototypes_are_the_round_centroids_and_do_not_move(heads, tmp_path):
    record = run_v2(heads, tmp_path)
    model, meta = load_model(tmp_path / "model.pt")
    assert meta["top_k"] == [K, K] and meta["projection"] == DIM
    for buffer, path in zip(model.top.heads, heads[3]):
        assert torch.equal(buffer, _prototype(path))  # exactly as set at the round's start
    assert not list(model.top.parameters())  # buffers: no gradient, no optimiser state
    optim = torch.load(tmp_path / "optim_body.pt", weights_only=True)
    assert len(optim["state"]) == len(model.body_parameters())
    first, last = record["lr_first_last"]
    expected = lr_at(0.1, "cosine", 0.5, 3, 1, 0, record["steps"], TrainSettings.lr_floor)
    assert first == pytest.approx(expected)
    assert last < first  # past the warm-up, the cosine decays through round 1 of 3
    assert record["config"]["method"] == "deepcluster-v2" and record["samples"] == 150


def test_heads_of_different_sizes_each_train_on_their_own_prototypes(tmp_path):
    mixed = make_heads(tmp_path / "mixed", head1_k=7)
    run_v2(mixed, tmp_path / "out")
    model, meta = load_model(tmp_path / "out" / "model.pt")
    assert meta["top_k"] == [K, 7]
    assert [tuple(h.shape) for h in model.top.heads] == [(K, DIM), (7, DIM)]


def test_a_head_whose_centroids_are_not_its_labels_is_refused(tmp_path):
    shards, labels_dir, more, centroids = make_heads(tmp_path / "mixed", head1_k=7)
    swapped = (shards, labels_dir, more, centroids[::-1])  # head 0's 7-row file is head 1's
    with pytest.raises(LabelsError, match="labels 4 clusters but .* holds 7 centroids"):
        run_v2(swapped, tmp_path / "out")


def test_every_crop_of_an_image_carries_its_target(heads):
    shards, labels_dir, more, _ = heads
    crops = MultiCrop(16, 3, big_min=0.14, colour_strength=1.0)
    sampler = BalancedSampler(shards, labels_dir, cluster_sizes(shards, labels_dir, K),
                              balanced=False, more_labels_dirs=more, streams=1)
    streams = open_streams(sampler, 8, crops, workers=0)
    batches = MergedBatches(sampler.stream_lengths(), 8, streams, crops.sample_shape,
                            label_shape=(2,))
    images, labels, _ = batches.take(40)
    assert labels.shape == (40, 2) and torch.equal(labels[:, 1], (labels[:, 0] + 1) % K)
    unpacked = crops.unpack(images.float() / 255 * 0)  # shapes only
    assert [tuple(c.shape[1:]) for c in unpacked] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3
    normalised = crops.unpack(_normalised(images))
    for crop in normalised:  # a flat-colour image: every crop of it shows its planted label
        assert [label_of_pixels(img) for img in crop] == labels[:, 0].tolist()


def _normalised(packed: torch.Tensor) -> torch.Tensor:
    crops = MultiCrop(16, 3, big_min=0.14, colour_strength=1.0).unpack(packed)
    return torch.cat([normalize_floats(c.float() / 255).flatten(1) for c in crops], dim=1)


def test_the_full_size_crops_take_their_smallest_area_from_crop_min():
    ramp = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))).convert("RGB")
    whole = np.asarray(ramp.resize((16, 16), Image.BILINEAR))
    whole_crops = MultiCrop(16, 1, big_min=1.0, colour_strength=1.0)
    torch.manual_seed(0)
    for _ in range(8):  # big_min 1: each full-size crop is the whole image, at most mirrored
        for crop in whole_crops.unpack(whole_crops(ramp)[None])[:2]:
            pixels = crop[0].permute(1, 2, 0).numpy().astype(int)
            assert min(np.abs(pixels - whole).max(), np.abs(pixels - whole[:, ::-1]).max()) <= 2
    swav_crops = MultiCrop(16, 0, big_min=0.14, colour_strength=1.0)
    spans = [np.ptp(swav_crops(ramp).reshape(2, 3, 16, 16)[:, 0].numpy(), axis=-1).max()
             for _ in range(16)]
    assert min(spans) < np.ptp(whole[..., 0])  # SwAV's 0.14: some crops see part of the ramp


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0])
def test_colour_strength_bounds_the_brightness_jitter(strength):
    # On flat grey images only brightness acts (contrast, saturation, hue, greying and blur
    # leave a constant grey as it is), so each image's level shows its brightness factor.
    crops = MultiCrop(8, 0, big_min=1.0, colour_strength=strength)
    grey = torch.full((512, *crops.sample_shape), 102, dtype=torch.uint8)  # 0.4
    packed = crops.distort(grey, torch.Generator().manual_seed(0))
    level = denormalize_batch(crops.unpack(packed)[0])[:, :, 4, 4] / 0.4  # (512, 3)
    assert torch.allclose(level, level[:, :1], atol=1e-4)  # still grey
    factor = level[:, 0]
    assert factor.min() >= 1 - 0.8 * strength - 1e-4 and factor.max() <= 1 + 0.8 * strength + 1e-4
    if strength:  # and it spans its range: p = 0.8 of images jittered, uniformly
        assert factor.min() < 1 - 0.7 * strength and factor.max() > 1 + 0.7 * strength
        assert 0.7 < (factor != 1).float().mean() < 0.9


def test_the_loss_pairs_every_crop_with_its_images_targets():
    torch.manual_seed(0)
    net = build_model(ModelSpec(sobel=False, width=4, projection=DIM), seed=0).eval()
    net.set_prototypes([torch.randn(K, DIM), torch.randn(3, DIM)], 0.1)
    crops = MultiCrop(32, 2, big_min=0.14, colour_strength=1.0)
    packed = torch.randn(5, crops.sample_shape[0])
    targets = torch.tensor([[0, 1], [3, 2], [1, 0], [2, 2], [0, 1]])
    loss, _ = PrototypeMatching(crops.unpack).loss(net, packed, targets)
    expected = 0.0
    for crop in crops.unpack(packed):  # crop by crop, head by head, against the image's target
        for h, logits in enumerate(net([crop])):
            expected += torch.nn.functional.cross_entropy(logits, targets[:, h], reduction="sum")
    assert loss.item() == pytest.approx(expected.item() / (2 * 4), rel=1e-4)


def test_cosine_schedule_warms_up_then_decays_and_is_a_function_of_round_and_step():
    lr = [lr_at(0.3, "cosine", 1.0, 4, r, s, 10, 0.001) for r in range(4) for s in range(10)]
    assert lr[0] == 0.0 and lr[5] == pytest.approx(0.15) and lr[10] == pytest.approx(0.3)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:])) and lr[-1] < 0.01
    floored = [lr_at(0.3, "cosine", 1.0, 4, r, s, 10, 0.1) for r in range(5) for s in range(10)]
    assert floored[40] == pytest.approx(0.03) and min(floored[10:]) == pytest.approx(0.03)
    assert all(f >= x for f, x in zip(floored, lr))  # never below the unfloored schedule
    assert lr_at(0.3, "constant", 1.0, 4, 2, 7, 10, 0.001) == 0.3


def test_sigkill_then_rerun_continues_the_cosine_schedule_exactly(heads, tmp_path):
    options = {**OPTIONS, "batch_size": 8, "checkpoint_every": 2}  # ~19 steps
    reference = run_v2(heads, tmp_path / "uninterrupted", batch_size=8, checkpoint_every=2)
    out = tmp_path / "killed"
    killed_at = kill_at_first_checkpoint(launch_v2([sys.executable], heads, out, options), out)
    assert 0 < killed_at < reference["steps"]
    record = run_v2(heads, out, batch_size=8, checkpoint_every=2)
    assert record["resumed_from_step"] >= killed_at
    assert record["lr_first_last"] == reference["lr_first_last"]
    assert np.allclose([v for _, v in record["loss_curve"]],
                       [v for _, v in reference["loss_curve"]], rtol=1e-5)
    resumed = load_model(out / "model.pt")[0].state_dict()
    uninterrupted = load_model(tmp_path / "uninterrupted" / "model.pt")[0].state_dict()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_batch_size_0_trains_as_the_batch_it_picks_with_the_lr_scaled(heads, tmp_path):
    auto = run_v2(heads, tmp_path / "auto", batch_size=0)
    assert auto["batch_size"] == 32 and auto["steps"] == 5  # 150 rows: the smallest choice
    assert auto["lr"] == pytest.approx(OPTIONS["lr"] * 32 / 256)
    chosen = run_v2(heads, tmp_path / "chosen", batch_size=32, lr=auto["lr"])
    assert auto["lr_first_last"] == chosen["lr_first_last"]
    assert auto["loss_curve"] == chosen["loss_curve"]


def test_two_rank_torchrun_v2_round(heads, tmp_path):
    proc = launch_v2(TWO_RANKS, heads, tmp_path, {**OPTIONS, "batch_size": 0})
    _, stderr = output_or_fail(proc, 180, "the 2-rank v2 round")
    assert proc.returncode == 0, stderr[-3000:]
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["world_size"] == 2 and sum(record["samples_per_rank"]) == 150
    assert record["batch_size"] == 32 and record["steps"] == 3  # both ranks chose one batch
    model, _ = load_model(tmp_path / "model.pt")
    for buffer, path in zip(model.top.heads, heads[3]):
        assert torch.equal(buffer, _prototype(path))
