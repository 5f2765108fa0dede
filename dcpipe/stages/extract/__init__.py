"""Shards -> the round's feature store, through model r-1.

The entry point is imported on first use: the package's light modules (settings, outputs) must
not pull in torch for `dcpipe status`.
"""
from dcpipe.stages.extract.settings import ExtractSettings


def __getattr__(name):
    if name == "extract":
        from dcpipe.stages.extract.stage import extract
        return extract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
