"""Image sources -> WebDataset shards (img2dataset's roles: plan, worker, resizer, commit).

The entry point is imported on first use: the package's light modules (settings, outputs) must
not pull in torch for `dcpipe status`.
"""
from dcpipe.stages.shard.settings import ShardSettings


def __getattr__(name):
    if name == "shard":
        from dcpipe.stages.shard.stage import shard
        return shard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
