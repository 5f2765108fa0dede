import json

import numpy as np
import pytest
import torch
from PIL import Image

from dcpipe.errors import FileFormatError, SettingsError
from dcpipe.stages.common.digests import load_checked, save_checked, verify_file
from dcpipe.stages.common.modelspec import ModelSpec
from support.damage import flip_low_bit_of_weight, largest_weight
from dcpipe.stages.common.models import (build_model, denormalize_batch, eval_crop, eval_transform,
                                        load_model, make_sobel, normalize_batch, save_model,
                                        train_transform)

torch.set_num_threads(1)


def test_sobel_front_end_is_fixed_grey_then_sobel_and_frozen():
    sobel = make_sobel()
    grey, filters = sobel
    assert torch.equal(grey.weight, torch.full((1, 3, 1, 1), 1 / 3))
    assert torch.equal(filters.weight[0, 0], torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]))
    assert torch.equal(filters.weight[1, 0], filters.weight[0, 0].T)
    assert not any(p.requires_grad for p in sobel.parameters())
    # a vertical edge lights up the x filter only, and colour does not matter
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = torch.tensor([0.2, 0.5, 0.8])[:, None, None]
    out = sobel(image)[0, :, 1:-1, 1:-1]
    assert out[0].abs().sum() > 0 and out[1].abs().sum() == 0


def test_sobel_stays_frozen_and_body_parameters_exclude_it():
    model = build_model(ModelSpec("small", input_size=32), num_classes=5, seed=0)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("sobel.") for n in names)
    assert len(model.body_parameters()) == len([n for n in names if not n.startswith("top.")])


@pytest.mark.parametrize("arch,size,dim,convs", [
    ("small", 32, 1024, 5), ("small", 64, 1024, 5), ("small-gap", 32, 512, 4),
    ("small-gap", 96, 512, 4), ("alexnet", 64, 4096, 5), ("vgg16", 32, 4096, 13)])
def test_output_shapes(arch, size, dim, convs):
    model = build_model(ModelSpec(arch, input_size=size), num_classes=7, seed=0).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model.embed(x).shape == (2, dim) and model.feature_dim == dim
        assert model(x).shape == (2, 7)
        assert len(model.conv_activations(x)) == convs


def test_paper_sizes_alexnet_224_has_256x6x6_fc_input():
    model = build_model(ModelSpec("alexnet", input_size=224))
    assert model.config["input_size"] == 224
    assert model.classifier[1].in_features == 256 * 6 * 6
    assert [type(m).__name__ for m in model.classifier] == [
        "Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU"]
    convs = [block[0] for block in model.features if isinstance(block, torch.nn.Sequential)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [
        (96, 11), (256, 5), (384, 3), (384, 3), (256, 3)]
    assert convs[0].stride == (4, 4)


def test_rgb_option_takes_three_channels():
    model = build_model(ModelSpec("small", sobel=False, input_size=32), seed=0)
    assert model.sobel is None and model.features[0][0].in_channels == 3


def test_init_statistics_follow_the_reference():
    model = build_model(ModelSpec("small", input_size=32, width=32), num_classes=10, seed=0)
    conv = model.features[2][0]  # 32 -> 64 channels, 3x3
    expected = np.sqrt(2 / (3 * 3 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.classifier[1].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert model.top.weight.std().item() == pytest.approx(0.01, rel=0.1)
    bn = model.features[0][1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    layers = [*model.features.modules(), *model.classifier.modules(), model.top]
    biased = [m for m in layers if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(biased) == 8 and all(torch.all(m.bias == 0) for m in biased)


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(ModelSpec("small", input_size=32, width=16), seed=4)
    assert torch.rand(1) == before
    b = build_model(ModelSpec("small", input_size=32, width=16), seed=4)
    c = build_model(ModelSpec("small", input_size=32, width=16), seed=5)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["classifier.1.weight"], sc["classifier.1.weight"])


def test_embed_is_the_penultimate_fc_before_its_relu():
    model = build_model(ModelSpec("small", input_size=32, width=16), num_classes=3, seed=0).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        embedded = model.embed(x)
        assert (embedded < 0).any()
        after_relu = model.classifier(model._trunk(x))
    assert torch.equal(torch.relu(embedded), after_relu)


def test_replace_top_gives_a_fresh_layer_of_k_outputs():
    model = build_model(ModelSpec("small", input_size=32, width=16), num_classes=3, seed=0)
    old = model.top
    top = model.replace_top(50, torch.Generator().manual_seed(1))
    assert model.top is top and top is not old and top.out_features == 50
    assert torch.all(top.bias == 0) and top.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert model.config["top_k"] == 50
    again = model.replace_top(50, torch.Generator().manual_seed(1))
    assert torch.equal(again.weight, top.weight)


def test_save_load_round_trip_reproduces_embed_exactly(tmp_path):
    model = build_model(ModelSpec("small", input_size=48, width=16), num_classes=6, seed=3)
    model.train()
    model(torch.randn(8, 3, 48, 48))  # moves BN running stats away from their init
    model.eval()
    meta = save_model(tmp_path / "model.pt", model, {"round": 4})
    loaded, loaded_meta = load_model(tmp_path / "model.pt")
    beside = json.loads((tmp_path / "model.json").read_text())
    assert loaded_meta == meta == {k: v for k, v in beside.items() if k != "sha256"}
    assert len(beside["sha256"]) == 64  # the digest model.pt carries, for people and tools
    assert (meta["arch"], meta["input_size"], meta["width"], meta["top_k"], meta["round"],
            meta["feature_dim"], meta["sobel"]) == ("small", 48, 16, 6, 4, 256, True)
    x = torch.randn(5, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded.embed(x), model.embed(x))
        assert torch.equal(loaded(x), model(x))


def test_dropout_is_a_setting_recorded_in_the_model_file(tmp_path):
    x = torch.randn(6, 3, 32, 32)
    outputs = {}
    for p in (0.5, 0.0):
        model = build_model(ModelSpec("small", input_size=32, width=16, dropout=p), seed=0)
        model.train()
        outputs[p] = [model.embed(x) for _ in range(2)]  # BN in train mode: the same batch twice
        save_model(tmp_path / f"{p}.pt", model)
        assert load_model(tmp_path / f"{p}.pt")[0].spec.dropout == p
    assert not torch.equal(*outputs[0.5]) and torch.equal(*outputs[0.0])
    with pytest.raises(SettingsError, match="dropout"):
        ModelSpec(dropout=1.0)


def test_small_gap_features_are_the_last_convs_channel_means():
    model = build_model(ModelSpec("small-gap", input_size=32, width=8), seed=0).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        last = model.conv_activations(x)[-1]
        assert torch.allclose(model.embed(x), last.mean(dim=(2, 3)), atol=1e-6)
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Dropout)) for m in model.modules())


def test_a_model_file_without_dropout_loads_with_the_papers_half():
    assert ModelSpec.from_meta({"arch": "small", "sobel": True, "input_size": 32}).dropout == 0.5


class _Exploit:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_load_never_unpickles_arbitrary_objects(tmp_path):
    path, witness = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"state_dict": {}, "meta": {"format": "dcpipe.model/1"},
                "x": _Exploit(witness)}, path)
    with pytest.raises(FileFormatError, match=f"{path}: refused: it holds pickled objects"):
        load_model(path)
    assert not witness.exists()
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a dcpipe model"):
        load_model(tmp_path / "other.pt")


def test_a_low_bit_flipped_in_a_weight_is_refused_naming_the_file(tmp_path):
    model = build_model(ModelSpec("small", input_size=32, width=4), num_classes=3, seed=1)
    save_model(tmp_path / "model.pt", model)
    flip_low_bit_of_weight(tmp_path / "model.pt", largest_weight(model.state_dict()))
    with pytest.raises(FileFormatError, match=r"model\.pt: .*damaged"):
        load_model(tmp_path / "model.pt")
    assert "model.pt" in verify_file(tmp_path / "model.pt")


def test_a_torch_file_written_before_digests_still_loads(tmp_path):
    torch.save({"a": torch.ones(3), "n": 2}, tmp_path / "old.pt")
    assert load_checked(tmp_path / "old.pt")["n"] == 2 and verify_file(tmp_path / "old.pt") is None
    save_checked(tmp_path / "new.pt", {"a": torch.ones(3), "n": 2})
    assert load_checked(tmp_path / "new.pt")["n"] == 2


def test_transforms_give_normalised_tensors_of_the_input_size():
    image = Image.new("RGB", (50, 40), (124, 116, 104))  # about the ImageNet mean
    for transform in (eval_transform(32), train_transform(32)):
        out = transform(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert out.abs().max() < 0.05
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1)))
    centre = eval_transform(224)(ramp.convert("RGB"))
    assert centre.shape == (3, 224, 224)
    assert torch.equal(centre, eval_transform(224)(ramp.convert("RGB")))  # deterministic


def test_batch_normalisation_equals_the_per_image_transform():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)) for _ in range(3)]
    per_image = torch.stack([eval_transform(32)(im) for im in images])
    crops = np.stack([np.asarray(eval_crop(32)(im)) for im in images])
    assert torch.equal(normalize_batch(torch.from_numpy(crops)), per_image)


def test_denormalize_batch_gives_back_the_pixels_per_channel():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 6, 5, 3), dtype=torch.uint8, generator=generator)
    back = denormalize_batch(normalize_batch(pixels)) * 255  # (4, 3, 6, 5)
    assert torch.allclose(back, pixels.permute(0, 3, 1, 2).float(), atol=1e-3)
    assert denormalize_batch(normalize_batch(pixels).double()).dtype == torch.float64


def test_train_transform_crops_within_crop_min_and_flips_only_when_asked():
    ramp = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))).convert("RGB")
    whole = eval_transform(32, crop_ratio=1.0)(ramp)
    mirrored = whole.flip(-1)
    outputs = {}
    for flip in (False, True):
        transform = train_transform(32, crop_min=1.0, flip=flip)  # the whole image, resized
        outputs[flip] = []
        for seed in range(16):
            torch.manual_seed(seed)
            outputs[flip].append(transform(ramp))
    assert all(torch.allclose(x, whole, atol=1e-5) for x in outputs[False])
    unflipped = sum(torch.allclose(x, whole, atol=1e-5) for x in outputs[True])
    flipped = sum(torch.allclose(x, mirrored, atol=1e-5) for x in outputs[True])
    assert unflipped + flipped == 16 and unflipped > 0 and flipped > 0
    torch.manual_seed(0)
    small_crops = [train_transform(32, crop_min=0.08, flip=False)(ramp) for _ in range(16)]
    assert any(not torch.allclose(x, whole, atol=1e-3) for x in small_crops)
