"""Image sources -> WebDataset shards (img2dataset's roles: plan, worker, resizer, commit).

The entry point is imported on first use (common/lazy.py).
"""
from dcpipe.stages.common.lazy import lazy_attributes
from dcpipe.stages.shard.settings import ShardSettings

__getattr__ = lazy_attributes(__name__, {"shard": "stage"})
