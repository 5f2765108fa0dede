"""What identifies a network: saved in every model file and read back from it.

Light on purpose (no torch): the pipeline's config and `status` use it without loading a model.
"""
from dataclasses import asdict, dataclass

from dcpipe.errors import SettingsError
from dcpipe.stages.common.ranges import Range, check_ranges

ARCHS = ("small", "small-gap", "alexnet", "vgg16")
WIDTH_ARCHS = ("small", "small-gap")  # those whose width can be chosen
# input_size: the smallest input each architecture's conv stack still reduces to >= 1 pixel is
# checked when the network is built (models.py); the maximum keeps one image's activations in RAM
RANGES = {"input_size": Range(8, 1024), "width": Range(0, 1024), "projection": Range(0, 8192),
          "dropout": Range(0.0, 0.9)}


@dataclass(frozen=True)
class ModelSpec:
    arch: str = "small"  # small, small-gap (32-96 px), alexnet, vgg16
    sobel: bool = True  # the paper's fixed grey + Sobel front-end
    input_size: int = 32  # network input (small: 32-96; alexnet/vgg16: 224)
    width: int = 0  # small, small-gap: first conv's channels (0 = the architecture's default)
    projection: int = 0  # DeepCluster-v2's L2-normalised projection head, this many dims (0: none)
    dropout: float = 0.5  # before each of the classifier's fc layers (the paper's AlexNet: 0.5)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise SettingsError(f"unknown architecture {self.arch!r}: choose from {list(ARCHS)}")
        if self.width and self.arch not in WIDTH_ARCHS:
            raise SettingsError(f"width applies to {' and '.join(WIDTH_ARCHS)} only, "
                                f"not {self.arch!r}")
        check_ranges(self, RANGES)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict) -> "ModelSpec":
        """The spec recorded in a model file's metadata (older files: width None = default, no
        projection, dropout 0.5)."""
        return cls(arch=meta["arch"], sobel=meta["sobel"], input_size=meta["input_size"],
                   width=meta.get("width") or 0, projection=meta.get("projection") or 0,
                   dropout=meta.get("dropout", 0.5))
