"""The shard stage's settings: the only place their defaults live (pipeline/defaults.toml is
checked against them)."""
from dataclasses import dataclass

from dcpipe.errors import SettingsError
from dcpipe.stages.sources import fetch

MAX_SHARD_SIZE = 1_000_000  # the six-digit row part of a key


@dataclass(frozen=True)
class ShardSettings:
    image_size: int = 256  # shorter side at most this many pixels (never upscaled)
    shard_size: int = 1000  # input rows per shard
    workers: int = 2  # processes
    threads: int = 8  # downloads in flight per process
    dedup: bool = False  # exact de-duplication by content hash
    timeout: float = fetch.TIMEOUT  # seconds per download
    max_bytes: int = fetch.MAX_BYTES  # download / file size cap
    public_only: bool = False  # refuse local paths, file:// and private/loopback addresses

    def __post_init__(self):
        if not 1 <= self.shard_size <= MAX_SHARD_SIZE:
            raise SettingsError(f"shard_size must be in [1, {MAX_SHARD_SIZE}], got {self.shard_size}")
        if min(self.image_size, self.workers, self.threads, self.timeout, self.max_bytes) <= 0:
            raise SettingsError("image_size, workers, threads, timeout and max_bytes must be positive")
