"""The train stage's settings: the only place their defaults live."""
import math
from dataclasses import dataclass

from dcpipe.errors import SettingsError
from dcpipe.stages.common.precision import check_precision
from dcpipe.stages.common.ranges import Range, above, check_ranges

METHODS = ("deepcluster", "deepcluster-v2")
SCHEDULES = ("constant", "cosine")
FEATURES = ("extract", "bank")
HEAD_INITS = ("random", "fitted")
RANGES = {"batch_size": Range(0, 65536), "lr": above(0, 100), "momentum": Range(0, 0.999),
          "weight_decay": Range(0, 1), "reassign": above(0, 10_000), "crop_min": above(0, 1),
          "workers": Range(0, 256), "checkpoint_every": Range(1, 10**9),
          "loss_every": Range(1, 10**9), "warmup_rounds": Range(0, 10_000),
          "lr_floor": Range(0, 1), "total_rounds": Range(0, 100_000), "temperature": above(0, 100),
          "small_crops": Range(0, 64), "colour_strength": Range(0, 1.25),
          "bn_images": Range(0, 10**9), "interleave": Range(1, 100_000), "window": Range(1, 10**7)}


@dataclass(frozen=True)
class TrainSettings:
    method: str = "deepcluster"  # or deepcluster-v2 (pipeline/methods.py: what else it changes)
    batch_size: int = 256  # per rank; 0: from the collection, with the lr scaled (batchsize.py)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-5
    reassign: float = 1.0  # epochs per round (samples drawn = reassign x collection size)
    crop_min: float = 0.08  # RandomResizedCrop's smallest crop, as a share of the image area
    flip: bool = True  # random horizontal flips (off for images that flipping changes)
    workers: int = 2  # decoding processes
    interleave: int = 16  # shards a loader stream reads at once, row by row (balanced_sampler.py):
    #                       on class-sorted shards the last group of a pass mixes fewer classes
    window: int = 4096  # shuffle buffer of a stream, in rows (its images are held in memory)
    checkpoint_every: int = 200  # steps
    loss_every: int = 10  # steps between points of the recorded loss curve
    lr_schedule: str = "constant"  # or cosine: linear warm-up, then cosine decay over the run
    warmup_rounds: float = 0.0  # cosine: rounds of linear warm-up from 0
    lr_floor: float = 0.001  # cosine: the lr it ends at, as a share of lr (SwAV: 4.8 -> 0.0048)
    total_rounds: int = 0  # cosine: rounds the schedule spans (0: those of `dcpipe run --rounds`)
    temperature: float = 0.1  # deepcluster-v2: logits = prototypes . z / temperature
    small_crops: int = 2  # deepcluster-v2: crops at half the input size, besides the 2 full ones
    #                      (2, not SwAV's 6: more epochs per CPU-hour, docs/benchmarks.md)
    colour_strength: float = 1.0  # deepcluster-v2: SimCLR's colour jitter strength s
    #                               (multicrop.py); above 1.25 brightness 1 - 0.8 s is below 0
    precision: str = "auto"  # bf16 autocast where the CPU/GPU has fast bf16 (auto), bf16 or fp32
    head_init: str = "random"  # deepcluster: the round's top layer, N(0, 0.01) (the paper) or
    #                           "fitted" to the clusters on the first draws (top_fit.py)
    bn_images: int = 0  # BatchNorm statistics of the saved model recomputed over this many of the
    #                    round's images, eval transform (running_stats.py); 0: training's own
    features: str = "extract"  # deepcluster-v2: the next round's features from the extract stage,
    #                            or "bank": the projections this round's training produced (bank.py)

    def __post_init__(self):
        self._check_choice("method", METHODS)
        check_precision(self.precision)
        self._check_choice("lr_schedule", SCHEDULES)
        check_ranges(self, RANGES)
        self._check_head_init()
        self._check_bank()

    def _check_choice(self, name: str, choices: tuple) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise SettingsError(f"{name} must be one of {list(choices)}, got {value!r}")

    def _check_head_init(self) -> None:
        self._check_choice("head_init", HEAD_INITS)
        if self.head_init == "fitted" and self.method != "deepcluster":
            raise SettingsError('head_init = "fitted" is for DeepCluster\'s top layer; '
                                "DeepCluster-v2's heads are always the round's centroids")

    def _check_bank(self) -> None:
        self._check_choice("features", FEATURES)
        if self.features == "bank" and self.method != "deepcluster-v2":
            raise SettingsError('features = "bank" is DeepCluster-v2\'s memory bank: set [train] '
                                'method = "deepcluster-v2", or features = "extract"')
        if self.features == "bank" and self.reassign != int(self.reassign):
            raise SettingsError(f'features = "bank" needs every sample seen in the round\'s last '
                                f"epoch: a whole number of epochs, [train] reassign = "
                                f"{math.ceil(self.reassign)} instead of {self.reassign}")
