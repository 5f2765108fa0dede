"""The train stage's settings: the only place their defaults live."""
from dataclasses import dataclass

from dcpipe.errors import SettingsError


@dataclass(frozen=True)
class TrainSettings:
    batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-5
    reassign: float = 1.0  # epochs per round (samples drawn = reassign x collection size)
    crop_min: float = 0.08  # RandomResizedCrop's smallest crop, as a share of the image area
    flip: bool = True  # random horizontal flips (off for images that flipping changes)
    workers: int = 2  # decoding processes
    checkpoint_every: int = 200  # steps
    loss_every: int = 10  # steps between points of the recorded loss curve

    def __post_init__(self):
        if min(self.batch_size, self.checkpoint_every, self.loss_every) < 1 or self.workers < 0:
            raise SettingsError("batch_size, checkpoint_every and loss_every must be >= 1, workers >= 0")
        if not 0 < self.crop_min <= 1:
            raise SettingsError(f"crop_min is the smallest crop's share of the image area, in (0, 1]: "
                                f"{self.crop_min}")
        if self.reassign <= 0:
            raise SettingsError(f"reassign must be > 0, got {self.reassign}")
