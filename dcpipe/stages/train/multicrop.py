"""DeepCluster-v2's augmentation: several crops of each image, each with colour distortion.

Two crops at the input size (area share `big_min`-1: `[train] crop_min`, v2's is SwAV's 0.14)
and `small` crops at half of it (0.05-0.14), as SwAV's 224 / 96 px at 32 / 16 px; each flipped at
random, colour-jittered with p = 0.8 (brightness, contrast, saturation 0.8 s, hue 0.2 s, SimCLR's
strength s = `[train] colour_strength`), greyed with p = 0.2 and blurred with p = 0.5 (sigma
0.1-2 px at 224 px, scaled to the crop: at 32 px at most 0.3 px, close to none). RGB, no Sobel.

The work is split where it is cheapest. Loader workers only decode, crop and flip, and pack a
sample's crops as uint8 in one flat tensor (so v1's loader and batching carry them unchanged).
The main process distorts whole batches at once with tensor ops (`distort`): per image in PIL,
the colour steps cost 3.5 ms of the 4.2 ms an image took, more than the model's step.
Random parameters come from a generator the caller seeds per step, so a resumed round repeats
them exactly.
"""
import math

import torch
import torch.nn.functional as F
from torchvision import transforms

from dcpipe.stages.common.models import normalize_floats

SMALL_SCALE = (0.05, 0.14)
JITTER = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue at strength 1 (SwAV's)
P_JITTER, P_GREY, P_BLUR = 0.8, 0.2, 0.5
BLUR_SIGMA_224 = (0.1, 2.0)
GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


class MultiCrop:
    """PIL image -> one flat uint8 tensor holding 2 big and `small` small crops (in workers);
    `distort` turns a batch of them into normalised, colour-distorted float crops."""

    def __init__(self, size: int, small: int, big_min: float, colour_strength: float):
        self.colour_strength = colour_strength
        small_size = max(8, size // 2)
        self.shapes = [(3, size, size)] * 2 + [(3, small_size, small_size)] * small
        self.big = _crop(size, (big_min, 1.0))
        self.little = _crop(small_size, SMALL_SCALE)

    @property
    def sample_shape(self) -> tuple:
        return (sum(c * h * w for c, h, w in self.shapes),)

    def __call__(self, image) -> torch.Tensor:
        crops = [self.big(image), self.big(image)]
        crops += [self.little(image) for _ in self.shapes[2:]]
        return torch.cat([c.flatten() for c in crops])

    def unpack(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """(n, packed) -> one (n, 3, h, w) tensor per crop, big crops first."""
        sizes = [c * h * w for c, h, w in self.shapes]
        return [part.reshape(len(batch), *shape)
                for part, shape in zip(batch.split(sizes, dim=1), self.shapes)]

    def distort(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 packed crops -> float packed crops, colour-distorted and normalised."""
        crops = [normalize_floats(colour_distort(c.float() / 255, generator, self.colour_strength))
                 for c in self.unpack(batch)]
        return torch.cat([c.flatten(1) for c in crops], dim=1)


def _crop(size: int, scale: tuple) -> transforms.Compose:
    return transforms.Compose([transforms.RandomResizedCrop(size, scale=scale),
                               transforms.RandomHorizontalFlip(), transforms.PILToTensor()])


def _uniform(n: int, low: float, high: float, generator) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high, generator=generator)[:, None, None, None]


def _chance(n: int, p: float, generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < p)[:, None, None, None]


def _grey(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(GREY, dtype=x.dtype)[None, :, None, None]
    return (x * weights).sum(dim=1, keepdim=True)


def _hue_shift(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Hue rotated by `turns` of a full turn: a rotation of the chroma plane (YIQ), the
    batched stand-in for the HSV round trip."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                           [0.211, -0.523, 0.312]], dtype=x.dtype)
    angle = turns.flatten() * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(x), 3, 3, dtype=x.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # (n, 3, 3)
    return torch.einsum("nij,njhw->nihw", matrix, x)


def colour_distort(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Per image of (n, 3, h, w) in [0, 1]: jitter (p 0.8) of `strength` x JITTER, grey (p 0.2),
    blur (p 0.5)."""
    n = len(x)
    if n == 0:
        return x
    b, c, s, h = (value * strength for value in JITTER)
    jitter = _chance(n, P_JITTER, generator)
    out = x * _uniform(n, 1 - b, 1 + b, generator)
    out = out.clamp(0, 1)
    mean = _grey(out).mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * _uniform(n, 1 - c, 1 + c, generator) + mean).clamp(0, 1)
    grey = _grey(out)
    out = ((out - grey) * _uniform(n, 1 - s, 1 + s, generator) + grey).clamp(0, 1)
    out = _hue_shift(out, _uniform(n, -h, h, generator)).clamp(0, 1)
    out = torch.where(jitter, out, x)
    out = torch.where(_chance(n, P_GREY, generator), _grey(out).expand_as(out), out)
    return torch.where(_chance(n, P_BLUR, generator), _blur(out, generator), out)


def _blur(x: torch.Tensor, generator) -> torch.Tensor:
    """Gaussian blur, sigma per image in BLUR_SIGMA_224 scaled to the crop's size."""
    n, channels, height, _ = x.shape
    low, high = (s * height / 224 for s in BLUR_SIGMA_224)
    sigma = torch.empty(n).uniform_(low, high, generator=generator)
    size = max(3, (height // 10) | 1)  # odd, ~10% of the crop, as SwAV's kernel
    offsets = torch.arange(size, dtype=x.dtype) - size // 2
    kernel = torch.exp(-offsets[None, :] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    flat = x.reshape(1, n * channels, *x.shape[2:])
    pad = size // 2
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"),
                    kernel[:, None, None, :], groups=n * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"),
                    kernel[:, None, :, None], groups=n * channels)
    return flat.reshape(x.shape)
