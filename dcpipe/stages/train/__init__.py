"""Shards + labels -> model r, with cluster-balanced resampling.

The entry point is imported on first use (common/lazy.py).
"""
from dcpipe.stages.common.lazy import lazy_attributes
from dcpipe.stages.train.settings import TrainSettings

__getattr__ = lazy_attributes(__name__, {"train": "stage"})
