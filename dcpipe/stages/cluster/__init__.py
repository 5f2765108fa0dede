"""Feature store -> PCA-whitened k-means (or PIC) -> the round's label shard index.

The entry point is imported on first use (common/lazy.py).
"""
from dcpipe.stages.common.lazy import lazy_attributes
from dcpipe.stages.cluster.settings import ClusterSettings

__getattr__ = lazy_attributes(__name__, {"cluster": "stage"})
