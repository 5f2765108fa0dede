"""Shards -> the round's feature store, through model r-1.

The entry point is imported on first use (common/lazy.py).
"""
from dcpipe.stages.common.lazy import lazy_attributes
from dcpipe.stages.extract.settings import ExtractSettings

__getattr__ = lazy_attributes(__name__, {"extract": "stage"})
