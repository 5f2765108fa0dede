"""DeepCluster-v2's augmentation: several crops of each image, each with colour distortion.

Two crops at the input size (area share 0.14-1) and `small` crops at half of it (0.05-0.14), as
SwAV's 224 / 96 px at 32 / 16 px; each flipped at random, colour-jittered (0.8, 0.8, 0.8, 0.2
with p = 0.8), greyed with p = 0.2 and blurred with p = 0.5 (sigma 0.1-2 px at 224 px, scaled to
the crop). RGB, no Sobel. A sample's crops travel packed in one flat tensor, so that the loader
and the batching of v1 carry them unchanged; `unpack` cuts a batch back into crops.
"""
import torch
from torchvision import transforms

from dcpipe.stages.common.models import IMAGENET_MEAN, IMAGENET_STD

BIG_SCALE = (0.14, 1.0)
SMALL_SCALE = (0.05, 0.14)
BLUR_SIGMA_224 = (0.1, 2.0)


def _crop_transform(size: int, scale: tuple) -> transforms.Compose:
    sigma = tuple(s * size / 224 for s in BLUR_SIGMA_224)
    kernel = max(3, (size // 10) | 1)  # odd, ~10% of the crop as in SwAV
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=scale),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([transforms.GaussianBlur(kernel, sigma)], p=0.5),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class MultiCrop:
    """PIL image -> one flat float tensor holding 2 big and `small` small crops."""

    def __init__(self, size: int, small: int):
        small_size = max(8, size // 2)
        self.shapes = [(3, size, size)] * 2 + [(3, small_size, small_size)] * small
        self.big, self.little = _crop_transform(size, BIG_SCALE), _crop_transform(small_size, SMALL_SCALE)

    @property
    def sample_shape(self) -> tuple:
        return (sum(c * h * w for c, h, w in self.shapes),)

    @property
    def n_crops(self) -> int:
        return len(self.shapes)

    def __call__(self, image) -> torch.Tensor:
        crops = [self.big(image), self.big(image)]
        crops += [self.little(image) for _ in self.shapes[2:]]
        return torch.cat([c.flatten() for c in crops])

    def unpack(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """(n, packed) -> one (n, 3, h, w) tensor per crop, big crops first."""
        sizes = [c * h * w for c, h, w in self.shapes]
        return [part.reshape(len(batch), *shape)
                for part, shape in zip(batch.split(sizes, dim=1), self.shapes)]
