"""The cluster stage's settings: the only place their defaults live."""
from dataclasses import dataclass

from dcpipe.errors import SettingsError

METHODS = ("kmeans", "pic")
USE_GPU = ("auto", "yes", "no")


@dataclass(frozen=True)
class ClusterSettings:
    k: int = 100  # clusters (of each head)
    heads: int = 1  # clusterings of the round, each with its own seed (DeepCluster-v2: 3)
    pca_dim: int = 256  # PCA-whitening to this many dims; 0: none, rows L2-normalised, spherical
    method: str = "kmeans"  # kmeans or pic
    niter: int = 20
    sample_size: int = 500_000  # rows the k-means is fitted on; every row is then assigned
    refine_passes: int = 2  # with a sample smaller than the store: Lloyd passes over every row
    use_gpu: str = "auto"  # faiss on the GPUs: auto (when faiss sees one), yes, no

    def __post_init__(self):
        if self.method not in METHODS:
            raise SettingsError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.use_gpu not in USE_GPU:
            raise SettingsError(f"use_gpu must be one of {list(USE_GPU)}, got {self.use_gpu!r}")
        if min(self.k, self.niter, self.heads) < 1 or self.pca_dim < 0:
            raise SettingsError(f"k, niter and heads must be positive, pca_dim >= 0 (k={self.k}, "
                                f"niter={self.niter}, heads={self.heads}, pca_dim={self.pca_dim})")
        if self.sample_size < 1:
            raise SettingsError(f"sample_size must be positive, got {self.sample_size}")
        if self.method == "kmeans" and self.sample_size < self.k:
            raise SettingsError(f"sample_size={self.sample_size} is smaller than k={self.k}: "
                                "k-means needs at least k points")
        if self.refine_passes < 0:
            raise SettingsError(f"refine_passes must be 0 or more, got {self.refine_passes}")
