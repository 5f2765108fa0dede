"""The train stage's settings: the only place their defaults live."""
from dataclasses import dataclass

from dcpipe.errors import SettingsError
from dcpipe.stages.common.precision import check_precision

METHODS = ("deepcluster", "deepcluster-v2")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainSettings:
    method: str = "deepcluster"  # or deepcluster-v2 (pipeline/methods.py: what else it changes)
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
    lr_schedule: str = "constant"  # or cosine: linear warm-up, then cosine decay over the run
    warmup_rounds: float = 0.0  # cosine: rounds of linear warm-up from 0
    total_rounds: int = 0  # cosine: rounds the schedule spans (0: those of `dcpipe run --rounds`)
    temperature: float = 0.1  # deepcluster-v2: logits = prototypes . z / temperature
    small_crops: int = 6  # deepcluster-v2: crops at half the input size, besides the 2 full ones
    precision: str = "auto"  # bf16 autocast where the CPU/GPU has fast bf16 (auto), bf16 or fp32

    def __post_init__(self):
        if self.method not in METHODS:
            raise SettingsError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        check_precision(self.precision)
        if self.lr_schedule not in SCHEDULES:
            raise SettingsError(f"lr_schedule must be one of {list(SCHEDULES)}, got {self.lr_schedule!r}")
        if self.warmup_rounds < 0 or self.total_rounds < 0 or self.small_crops < 0 \
                or self.temperature <= 0:
            raise SettingsError("warmup_rounds, total_rounds and small_crops must be >= 0, "
                                "temperature > 0")
        if min(self.batch_size, self.checkpoint_every, self.loss_every) < 1 or self.workers < 0:
            raise SettingsError("batch_size, checkpoint_every and loss_every must be >= 1, workers >= 0")
        if not 0 < self.crop_min <= 1:
            raise SettingsError(f"crop_min is the smallest crop's share of the image area, in (0, 1]: "
                                f"{self.crop_min}")
        if self.reassign <= 0:
            raise SettingsError(f"reassign must be > 0, got {self.reassign}")
