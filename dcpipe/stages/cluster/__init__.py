"""Feature store -> PCA-whitened k-means (or PIC) -> the round's label shard index.

The entry point is imported on first use: the package's light modules (settings, outputs) must
not pull in torch for `dcpipe status`.
"""
from dcpipe.stages.cluster.settings import ClusterSettings


def __getattr__(name):
    if name == "cluster":
        from dcpipe.stages.cluster.stage import cluster
        return cluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
