"""The extract stage's settings: the only place their defaults live."""
from dataclasses import dataclass

from dcpipe.errors import SettingsError
from dcpipe.stages.common.precision import check_precision
from dcpipe.stages.common.ranges import Range, check_ranges

DTYPES = ("float16", "float32")
RANGES = {"batch_size": Range(1, 65536), "workers": Range(0, 256),
          "chunk_rows": Range(1, 2**20)}


@dataclass(frozen=True)
class ExtractSettings:
    batch_size: int = 256
    workers: int = 2  # decoding processes
    dtype: str = "float16"  # float16 or float32
    chunk_rows: int = 4096  # store rows per chunk, at most (lowered to the largest shard)
    precision: str = "auto"  # bf16 autocast where the CPU/GPU has fast bf16 (auto), bf16 or fp32

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise SettingsError(f"dtype must be one of {list(DTYPES)}, not {self.dtype!r}")
        check_precision(self.precision)
        check_ranges(self, RANGES)
