"""What identifies a network: saved in every model file and read back from it.

Light on purpose (no torch): the pipeline's config and `status` use it without loading a model.
"""
from dataclasses import asdict, dataclass

from dcpipe.errors import SettingsError

ARCHS = ("small", "alexnet", "vgg16")


@dataclass(frozen=True)
class ModelSpec:
    arch: str = "small"  # small (32-96 px), alexnet, vgg16
    sobel: bool = True  # the paper's fixed grey + Sobel front-end
    input_size: int = 32  # network input (small: 32-96; alexnet/vgg16: 224)
    width: int = 0  # small only: first conv's channels (0 = the architecture's default)
    projection: int = 0  # DeepCluster-v2's L2-normalised projection head, this many dims (0: none)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise SettingsError(f"unknown architecture {self.arch!r}: choose from {list(ARCHS)}")
        if self.width and self.arch != "small":
            raise SettingsError(f"width applies to small only, not {self.arch!r}")
        if self.input_size < 1 or self.width < 0 or self.projection < 0:
            raise SettingsError(f"input_size must be positive, width and projection >= 0: {self}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict) -> "ModelSpec":
        """The spec recorded in a model file's metadata (older files: width None = default, no
        projection)."""
        return cls(arch=meta["arch"], sobel=meta["sobel"], input_size=meta["input_size"],
                   width=meta.get("width") or 0, projection=meta.get("projection") or 0)
