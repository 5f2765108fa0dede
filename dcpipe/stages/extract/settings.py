"""The extract stage's settings: the only place their defaults live."""
from dataclasses import dataclass

from dcpipe.errors import SettingsError
from dcpipe.stages.common.precision import check_precision

DTYPES = ("float16", "float32")


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
        if self.batch_size < 1 or self.chunk_rows < 1 or self.workers < 0:
            raise SettingsError("batch_size and chunk_rows must be >= 1, workers >= 0")
