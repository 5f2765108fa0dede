"""Held-out labelled images -> linear probes, k-NN, k-means, retrieval; `embed.embed` writes the
features of any image set (not served from here: the submodule of that name would shadow it).

The entry points are imported on first use (common/lazy.py).
"""
from dcpipe.stages.common.lazy import lazy_attributes
from dcpipe.stages.evaluate.settings import EvalSettings

__getattr__ = lazy_attributes(__name__, {"evaluate": "stage", "compare_random": "stage"})
