"""Held-out labelled images -> linear probes, k-NN, k-means, retrieval.

The entry point is imported on first use: the package's light modules (settings, outputs) must
not pull in torch for `dcpipe status`.
"""


def __getattr__(name):
    if name == "evaluate":
        from dcpipe.stages.evaluate.stage import evaluate
        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
