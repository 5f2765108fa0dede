"""The cluster stage's settings: the only place their defaults live."""
from dataclasses import dataclass, field

from dcpipe.errors import SettingsError
from dcpipe.stages.common.ranges import Range, check_ranges

METHODS = ("kmeans", "pic")
USE_GPU = ("auto", "yes", "no")
RANGES = {"k": Range(1, 1_000_000), "heads": Range(1, 64), "pca_dim": Range(0, 4096),
          "niter": Range(1, 10_000), "sample_size": Range(1, 100_000_000),
          "refine_passes": Range(0, 1000)}


@dataclass(frozen=True)
class ClusterSettings:
    k: int = 100  # clusters (of each head)
    heads: int = 1  # clusterings of the round, each with its own seed (DeepCluster-v2: 3)
    k_per_head: list = field(default_factory=list)  # one k per head in place of k ([]: k for all)
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
        check_ranges(self, RANGES)
        self._check_k_per_head()
        if self.method == "kmeans" and self.sample_size < self.largest_k:
            raise SettingsError(f"sample_size={self.sample_size} is smaller than "
                                f"k={self.largest_k}: k-means needs at least k points")

    def _check_k_per_head(self) -> None:
        if not self.k_per_head:
            return
        if len(self.k_per_head) != self.heads:
            raise SettingsError(f"k_per_head lists {len(self.k_per_head)} sizes but heads = "
                                f"{self.heads}: give one k per head (or set heads to match)")
        if any(type(k) is not int or k not in RANGES["k"] for k in self.k_per_head):
            raise SettingsError(f"k_per_head must list whole numbers in {RANGES['k']}, "
                                f"got {self.k_per_head}")

    def head_k(self, head: int) -> int:
        """Clusters of head `head`."""
        return self.k_per_head[head] if self.k_per_head else self.k

    @property
    def largest_k(self) -> int:
        return max(self.head_k(h) for h in range(self.heads))
