"""Per-layer features for the probes: layer choice, pooling budget, one pass = the model's own."""

import pytest
import torch

from dcpipe.stages.common.activations import PENULTIMATE, Tap, parse_layers, pooled_side
from dcpipe.stages.common.models import build_model
from dcpipe.stages.common.modelspec import ModelSpec

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return build_model(ModelSpec("small", input_size=32, width=8), seed=0).eval()


def test_pooled_side_is_closest_to_the_budget():
    # AlexNet conv1 (96 channels, 55x55) at the reference's ~9k dims: 10x10 -> 9600
    assert pooled_side(96, 55, 9216) == 10
    assert pooled_side(256, 13, 9216) == 6
    assert pooled_side(64, 4, 2048) == 4  # never beyond the map itself
    assert pooled_side(4096, 8, 2048) == 1


def test_layers_are_parsed_in_network_order(model):
    assert parse_layers(model, "all") == ["conv1", "conv2", "conv3", "conv4", "conv5", PENULTIMATE]
    assert parse_layers(model, "penultimate, conv3") == ["conv3", PENULTIMATE]
    with pytest.raises(ValueError, match="conv6"):
        parse_layers(model, ["conv6"])


def test_tap_gives_the_models_own_activations_in_one_pass(model):
    images = torch.randn(3, 3, 32, 32)
    tap = Tap(model, "all", probe_dims=128)
    out = tap(images)
    with torch.no_grad():
        maps = model.conv_activations(images)
        embedded = model.embed(images)
    for i, fmap in enumerate(maps):
        side = tap.sides[f"conv{i + 1}"]
        pooled = torch.nn.functional.adaptive_avg_pool2d(fmap, side).flatten(1)
        assert torch.allclose(torch.from_numpy(out[f"conv{i + 1}"]), pooled, atol=1e-6)
    assert torch.allclose(torch.from_numpy(out[PENULTIMATE]), embedded, atol=1e-6)
    assert tap.dims() == {name: rows.shape[1] for name, rows in out.items()}


def test_tap_budget_defaults_by_architecture(model):
    assert Tap(model, [PENULTIMATE]).budget == 2048
    alexnet = build_model(ModelSpec("alexnet", input_size=64), seed=0)
    assert Tap(alexnet, [PENULTIMATE]).budget == 9216
