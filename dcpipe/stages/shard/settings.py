"""The shard stage's settings: the only place their defaults live (pipeline/defaults.toml is
checked against them)."""
from dataclasses import dataclass

from dcpipe.errors import SettingsError
from dcpipe.shards.reader import DEFAULT_LABEL_FIELD

from dcpipe.stages.common.ranges import Range, above, check_ranges
from dcpipe.stages.sources import fetch

MAX_SHARD_SIZE = 1_000_000  # the six-digit row part of a key
RANGES = {"image_size": Range(1, 16384), "shard_size": Range(1, MAX_SHARD_SIZE),
          "workers": Range(1, 256), "shards_per_worker": Range(1, 64),
          "threads": Range(1, 1024), "timeout": above(0, 3600),
          "max_bytes": Range(1, 2**31), "retries": Range(0, 10)}


@dataclass(frozen=True)
class ShardSettings:
    image_size: int = 256  # shorter side at most this many pixels (never upscaled)
    shard_size: int = 1000  # input rows per shard
    workers: int = 2  # processes
    shards_per_worker: int = 3  # shards a worker works at once (one waits on slow servers)
    threads: int = 32  # downloads in flight per process (a dead host holds one through its retries)
    dedup: bool = False  # exact de-duplication by content hash
    timeout: float = fetch.TIMEOUT  # seconds per download attempt
    max_bytes: int = fetch.MAX_BYTES  # download / file size cap
    public_only: bool = False  # refuse local paths, file:// and private/loopback addresses
    label_field: str = DEFAULT_LABEL_FIELD  # adopted tars: JSON key or member (cls) of the true label
    retries: int = fetch.RETRIES  # more attempts after a 5xx, 429, timeout or dropped connection

    def __post_init__(self):
        check_ranges(self, RANGES)
        if not self.label_field.strip():
            raise SettingsError("label_field must name a JSON key or a member extension (cls)")
