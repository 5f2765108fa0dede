"""Model registry: Sobel front-end, AlexNet-BN, VGG-16-BN and a small-image net (DeepCluster).

Every network is the same shape: optional frozen Sobel front-end -> conv-BN-ReLU stack with pools
-> two fc layers (the classifier, ending in ReLU) -> a separate top layer that each round
replaces. The clustering feature (`embed`) is the classifier output before its final ReLU.

Checkpoints (`save_model` / `load_model`): one `.pt` holding `{"state_dict": ..., "meta": ...}`
where meta is plain JSON types, loaded with `torch.load(weights_only=True)` (never unpickles
arbitrary objects); a sibling `.json` with the same meta is written after it, for people and
tools, and marks the checkpoint complete. The model is rebuilt from the `.pt` alone. The `.pt`
records the digest of what it holds (common/digests.py; repeated in the `.json` as `sha256`)
and is refused on load when its weights no longer match it.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from dcpipe.errors import FileFormatError, SettingsError
from dcpipe.shards.atomic import atomic_write_bytes
from dcpipe.stages.common import seeds
from dcpipe.stages.common.digests import load_checked, save_checked
from dcpipe.stages.common.modelspec import WIDTH_ARCHS, ModelSpec
from dcpipe.stages.common.safeload import load_tensors
from dcpipe.stages.common.seeds import Domain

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "dcpipe.model/1"
CENTER_CROP_RATIO = 224 / 256  # the paper's Resize(256) + CenterCrop(224)
PROJECTION_HIDDEN = 2048  # DeepCluster-v2's projection MLP


# ---------------------------------------------------------------- architecture specs
# A layer is ("conv", out_channels, kernel, stride, padding), ("pool", kernel, stride) or
# ("adapool", output_size): the last one makes the fc input independent of the image size.
def _conv(out, k=3, stride=1, pad=1):
    return ("conv", out, k, stride, pad)


@dataclass(frozen=True)
class ArchSpec:
    layers: tuple
    fc_dim: int
    dropout_first: bool  # AlexNet: Dropout before each fc; VGG: only between the two fc layers


def _alexnet(width: None) -> ArchSpec:
    pool = ("pool", 3, 2)
    layers = (_conv(96, 11, 4, 2), pool, _conv(256, 5, 1, 2), pool,
              _conv(384), _conv(384), _conv(256), pool)
    return ArchSpec(layers, 4096, dropout_first=True)


def _vgg16(width: None) -> ArchSpec:
    pool = ("pool", 2, 2)
    layers = []
    for channels, repeats in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        layers += [_conv(channels)] * repeats + [pool]
    return ArchSpec(tuple(layers), 4096, dropout_first=False)


def _small(width: int) -> ArchSpec:
    """AlexNet's pattern (5 convs, pools after conv1, conv2, conv5) for 32-96 px images."""
    w = width
    pool = ("pool", 2, 2)
    layers = (_conv(w), pool, _conv(2 * w), pool, _conv(4 * w), _conv(4 * w), _conv(2 * w),
              ("adapool", 4))
    return ArchSpec(layers, 16 * w, dropout_first=True)


def _small_gap(width: int) -> ArchSpec:
    """SwAV's backbone shape for 32-96 px: 4 convs (pools between), global average pooling, no
    fc layers; the pooled 8w channels are the features (what the projection takes)."""
    w = width
    pool = ("pool", 2, 2)
    layers = (_conv(w), pool, _conv(2 * w), pool, _conv(4 * w), pool, _conv(8 * w), ("gap",))
    return ArchSpec(layers, 0, dropout_first=False)


ARCHS = {"alexnet": _alexnet, "vgg16": _vgg16, "small": _small, "small-gap": _small_gap}
DEFAULT_WIDTH = dict.fromkeys(WIDTH_ARCHS, 64)  # first conv's channels when width is 0


# ---------------------------------------------------------------- layers
def make_sobel() -> nn.Sequential:
    """Fixed front-end: RGB -> grey (1x1 conv, weights 1/3) -> Sobel x and y (3x3). Frozen."""
    grey = nn.Conv2d(3, 1, kernel_size=1)
    sobel = nn.Conv2d(1, 2, kernel_size=3, padding=1)
    with torch.no_grad():
        grey.weight.fill_(1.0 / 3.0)
        grey.bias.zero_()
        sobel.weight[0, 0] = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
        sobel.weight[1, 0] = torch.tensor([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]])
        sobel.bias.zero_()
    front = nn.Sequential(grey, sobel)
    for p in front.parameters():
        p.requires_grad = False
    return front


def _make_features(layers, in_channels: int) -> tuple[nn.Sequential, list[int]]:
    """The conv stack; each conv block is Sequential(conv, BN, ReLU). Returns block indices."""
    modules, conv_idx = [], []
    for layer in layers:
        if layer[0] == "conv":
            _, out, k, stride, pad = layer
            conv_idx.append(len(modules))
            modules.append(nn.Sequential(
                nn.Conv2d(in_channels, out, kernel_size=k, stride=stride, padding=pad),
                nn.BatchNorm2d(out), nn.ReLU(inplace=True)))
            in_channels = out
        elif layer[0] == "pool":
            modules.append(nn.MaxPool2d(kernel_size=layer[1], stride=layer[2]))
        elif layer[0] == "gap":
            modules.append(nn.AdaptiveAvgPool2d(1))
        else:
            modules.append(nn.AdaptiveMaxPool2d(layer[1]))
    return nn.Sequential(*modules), conv_idx


def _flat_dim(layers, size: int) -> int:
    """Flattened size of the conv stack output for a square input of `size` pixels."""
    channels, input_size = None, size
    for layer in layers:
        if layer[0] == "conv":
            _, channels, k, stride, pad = layer
            size = (size + 2 * pad - k) // stride + 1
        elif layer[0] == "pool":
            size = (size - layer[1]) // layer[2] + 1
        else:
            size = layer[1] if layer[0] == "adapool" else 1
        if size < 1:
            raise SettingsError(f"input_size {input_size} is too small for this architecture")
    return channels * size * size


def _make_classifier(flat: int, fc: int, dropout_first: bool, p: float) -> nn.Sequential:
    """Two fc layers of `fc` units with dropout p; none (the identity) when fc is 0."""
    if not fc:
        return nn.Sequential()
    if dropout_first:
        layers = [nn.Dropout(p), nn.Linear(flat, fc), nn.ReLU(inplace=True),
                  nn.Dropout(p), nn.Linear(fc, fc), nn.ReLU(inplace=True)]
    else:
        layers = [nn.Linear(flat, fc), nn.ReLU(inplace=True), nn.Dropout(p),
                  nn.Linear(fc, fc), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _new_linear(fan_in: int, fan_out: int, generator) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    _init_module(layer, generator)
    return layer


def _init_module(m: nn.Module, generator) -> None:
    """Reference init: conv N(0, sqrt(2/n)), n = kh*kw*out; BN 1/0; linear N(0, 0.01); biases 0."""
    with torch.no_grad():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.normal_(0.0, math.sqrt(2.0 / n), generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(1.0)
        elif isinstance(m, nn.Linear):
            m.weight.normal_(0.0, 0.01, generator=generator)
        else:
            return
        if m.bias is not None:
            m.bias.zero_()


def _make_projection(fc: int, out: int) -> nn.Sequential:
    """DeepCluster-v2's head: Linear(d, 2048), BN, ReLU, Linear(2048, out); L2-normalised after."""
    return nn.Sequential(nn.Linear(fc, PROJECTION_HIDDEN), nn.BatchNorm1d(PROJECTION_HIDDEN),
                         nn.ReLU(inplace=True), nn.Linear(PROJECTION_HIDDEN, out))


class Prototypes(nn.Module):
    """DeepCluster-v2's classifier: one bias-free linear layer per head whose weights are that
    head's centroids, set at the start of a round and never trained (buffers, not parameters).
    Returns each head's logits, prototypes . z / temperature."""

    def __init__(self, sizes: list[tuple[int, int]], temperature: float):
        super().__init__()
        self.temperature, self.n_heads = temperature, len(sizes)
        for h, shape in enumerate(sizes):
            self.register_buffer(f"head{h}", torch.zeros(shape))

    @property
    def heads(self) -> list[torch.Tensor]:
        return [getattr(self, f"head{h}") for h in range(self.n_heads)]

    def set(self, centroids: list[torch.Tensor]) -> None:
        for buffer, c in zip(self.heads, centroids, strict=True):
            buffer.copy_(F.normalize(c.to(buffer), dim=1))

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [z @ c.T / self.temperature for c in self.heads]


# ---------------------------------------------------------------- the network
class DeepClusterNet(nn.Module):
    """Sobel (optional) -> features -> classifier -> [projection] -> top. Build it with
    `build_model`. v1's top is a linear layer trained each round; v2's (with a projection) is
    Prototypes set from the round's centroids."""

    def __init__(self, arch: str, *, sobel: bool, input_size: int, num_classes: int | None,
                 width: int | None, projection: int, dropout: float,
                 generator: torch.Generator | None):
        super().__init__()
        spec = ARCHS[arch](width)
        self.config = {"arch": arch, "sobel": sobel, "input_size": input_size, "width": width,
                       "projection": projection, "dropout": dropout, "top_k": None}
        self.features, self._conv_idx = _make_features(spec.layers, 2 if sobel else 3)
        flat = _flat_dim(spec.layers, input_size)
        self.classifier = _make_classifier(flat, spec.fc_dim, spec.dropout_first, dropout)
        below = spec.fc_dim or flat  # what the top layer or the projection takes
        self.config["feature_dim"] = projection or below
        self.projection = _make_projection(below, projection) if projection else None
        for m in self.modules():
            _init_module(m, generator)
        self.sobel = make_sobel() if sobel else None
        self.top = None
        if num_classes is not None:
            self.replace_top(num_classes, generator)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_meta(self.config)

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    def replace_top(self, k: int, generator: torch.Generator | None = None) -> nn.Linear:
        """A fresh top layer Linear(feature_dim, k), N(0, 0.01) weights, zero bias (v1)."""
        ref = next(self.parameters())
        self.top = _new_linear(self.feature_dim, k, generator).to(ref.device, ref.dtype)
        self.config["top_k"] = k
        return self.top

    def set_prototypes(self, centroids: list[torch.Tensor], temperature: float) -> Prototypes:
        """v2's top: one head per centroid matrix (k_h x feature_dim), fixed for the round."""
        ref = next(self.parameters())
        self.top = Prototypes([tuple(c.shape) for c in centroids], temperature).to(ref.device)
        self.top.set(centroids)
        self.config["top_k"] = [len(c) for c in centroids]
        self.config["temperature"] = temperature
        return self.top

    def body_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters below the top layer (the frozen Sobel is excluded)."""
        return [p for name, p in self.named_parameters()
                if p.requires_grad and not name.startswith("top.")]

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        if self.sobel is not None:
            x = self.sobel(x)
        return torch.flatten(self.features(x), 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The clustering feature: v1, the penultimate fc output before its final ReLU; v2, the
        L2-normalised projection."""
        if self.projection is None:
            return self.classifier[:-1](self._trunk(x))
        return self._projected(x)

    def _projected(self, x) -> torch.Tensor:
        return F.normalize(self.projection(self.classifier_output(x)), dim=1)

    def classifier_output(self, x) -> torch.Tensor:
        """What the top layer (v1) or the projection (v2) takes, of a batch or of a list of crops
        (v2's multi-crop): consecutive crops of one size go through the convs together, the rows
        come out crop after crop."""
        if isinstance(x, torch.Tensor):
            return self.classifier(self._trunk(x))
        groups, parts = [], []
        for crop in x:
            if groups and groups[-1][0].shape == crop.shape:
                groups[-1].append(crop)
            else:
                groups.append([crop])
        for group in groups:
            parts.append(self.classifier(self._trunk(torch.cat(group))))
        return torch.cat(parts)

    def forward(self, x, with_projection: bool = False):
        """v1: logits (N, k) of a batch; v2: a list of logits, one per head of prototypes, of a
        batch or of a list of crops (rows crop after crop), and with `with_projection` also the
        normalised projections they came from (the training's memory bank records them)."""
        if self.top is None:
            raise RuntimeError("model has no top layer: call replace_top(k) or set_prototypes")
        if self.projection is None:
            return self.top(self.classifier_output(x))
        z = self._projected(x)
        return (self.top(z), z) if with_projection else self.top(z)

    def conv_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of every conv block (after its ReLU), for per-layer linear probes."""
        if self.sobel is not None:
            x = self.sobel(x)
        outputs = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self._conv_idx:
                outputs.append(x)
        return outputs


def build_model(spec: ModelSpec, *, num_classes: int | None = None,
                seed: int | None = None) -> DeepClusterNet:
    """A freshly initialised network; `seed` makes the init reproducible (global RNG untouched).

    `spec.width` (small, small-gap) is the first conv's channel count (0: 64; small: convs
    64-128-256-256-128, fc 1024). `num_classes=None` leaves no top layer (enough for `embed`).
    """
    width = spec.width or DEFAULT_WIDTH.get(spec.arch)
    if seed is None:
        generator, rng_guard = None, contextlib.nullcontext()
    else:  # layer constructors draw from the global RNG: seeded builds leave it untouched
        generator, rng_guard = torch.Generator().manual_seed(seed), torch.random.fork_rng([])
    with rng_guard:
        return DeepClusterNet(spec.arch, sobel=spec.sobel, input_size=spec.input_size,
                              num_classes=num_classes, width=width, projection=spec.projection,
                              dropout=spec.dropout, generator=generator)


def random_init(spec: ModelSpec, seed: int, num_classes: int | None = None) -> DeepClusterNet:
    """Round 0's network for a workspace seed: the same for extract, train and the eval baseline."""
    return build_model(spec, num_classes=num_classes, seed=seeds.int_seed(seed, 0, Domain.INIT))


# ---------------------------------------------------------------- checkpoints
def save_model(path, model: DeepClusterNet, meta: dict | None = None) -> dict:
    """Write `path` (.pt: state dict + meta) then `path.with_suffix('.json')` (meta). Atomic.

    `meta` holds caller fields (e.g. round); the model's own config overrides clashing keys.
    Returns the full meta.
    """
    path = Path(path)
    full = {**(meta or {}), **model.config, "format": CHECKPOINT_FORMAT}
    json.dumps(full)  # proves meta is plain JSON before anything is written
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = save_checked(path, {"state_dict": state, "meta": full})
    text = json.dumps({**full, "sha256": digest}, indent=2, sort_keys=True)
    atomic_write_bytes(path.with_suffix(".json"), text.encode() + b"\n")
    return full


def load_model(path, map_location="cpu") -> tuple[DeepClusterNet, dict]:
    """Rebuild a saved model from its .pt alone (weights_only load, digest checked). Returned in
    eval mode."""
    blob = load_checked(path, map_location)
    if not isinstance(blob.get("meta"), dict) or blob["meta"].get("format") != CHECKPOINT_FORMAT:
        raise FileFormatError(f"{path}: not a dcpipe model checkpoint")
    meta = blob["meta"]
    top_k = meta["top_k"]
    model = build_model(ModelSpec.from_meta(meta), num_classes=None if isinstance(top_k, list) else top_k)
    if isinstance(top_k, list):  # v2: prototypes, filled by the state dict
        model.set_prototypes([torch.zeros(k, model.feature_dim) for k in top_k], meta["temperature"])
    model.load_state_dict(blob["state_dict"], strict=True)
    return model.eval(), meta


# ---------------------------------------------------------------- transforms
def _normalize():
    return [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def _center_crop(input_size: int, crop_ratio: float) -> list:
    return [transforms.Resize(round(input_size / crop_ratio)), transforms.CenterCrop(input_size)]


def eval_transform(input_size: int, crop_ratio: float = CENTER_CROP_RATIO):
    """Central crop as the paper: Resize(256)+CenterCrop(224) at 224, same ratio at other sizes."""
    return transforms.Compose([*_center_crop(input_size, crop_ratio), *_normalize()])


def eval_crop(input_size: int, crop_ratio: float = CENTER_CROP_RATIO):
    """`eval_transform` without the tensor steps: PIL in, PIL out (see `normalize_batch`)."""
    return transforms.Compose(_center_crop(input_size, crop_ratio))


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGENET_MEAN and IMAGENET_STD as (3, 1, 1) tensors of x's dtype and device."""
    return tuple(torch.tensor(v, dtype=x.dtype, device=x.device)[:, None, None]
                 for v in (IMAGENET_MEAN, IMAGENET_STD))


def normalize_floats(x: torch.Tensor) -> torch.Tensor:
    """Pixel values (N, 3, H, W) in 0..1 -> model inputs, the same ops as Normalize."""
    mean, std = _channel_stats(x)
    return x.sub(mean).div(std)


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W), bit-identical to ToTensor + Normalize per image.

    One vectorised op per batch instead of two small ones per image (and 4x less data between
    the decode workers and the model).
    """
    return normalize_floats(images.permute(0, 3, 1, 2).float().div(255)).contiguous()


def denormalize_batch(x: torch.Tensor) -> torch.Tensor:
    """Normalised model inputs (N, 3, H, W) back to pixel values, 0..1 before any clamping."""
    mean, std = _channel_stats(x)
    return x * std + mean


def train_transform(input_size: int, crop_min: float = 0.08, flip: bool = True):
    """The paper's augmentation: RandomResizedCrop (area share crop_min..1) + horizontal flip."""
    flips = [transforms.RandomHorizontalFlip()] if flip else []
    return transforms.Compose([transforms.RandomResizedCrop(input_size, scale=(crop_min, 1.0)),
                               *flips, *_normalize()])
