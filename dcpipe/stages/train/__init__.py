"""Shards + labels -> model r, with cluster-balanced resampling.

The entry point is imported on first use: the package's light modules (settings, outputs) must
not pull in torch for `dcpipe status`.
"""
from dcpipe.stages.train.settings import TrainSettings


def __getattr__(name):
    if name == "train":
        from dcpipe.stages.train.stage import train
        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
