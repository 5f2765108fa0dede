"""Held-out labelled images -> linear probes, k-NN, k-means, retrieval.

The entry point is imported on first use: the package's light modules (settings, outputs) must
not pull in torch for `dcpipe status`.
"""
from dcpipe.stages.evaluate.settings import EvalSettings


def __getattr__(name):
    if name in ("evaluate", "compare_random"):
        from dcpipe.stages.evaluate import stage
        return getattr(stage, name)
    if name == "embed":
        from dcpipe.stages.evaluate.embed import embed
        return embed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
