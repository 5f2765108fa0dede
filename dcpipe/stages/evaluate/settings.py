"""`dcpipe eval`'s settings: the only place their defaults live (the CLI's flags show them)."""
from dataclasses import dataclass

from dcpipe.errors import SettingsError
from dcpipe.stages.common.ranges import Range, check_ranges

RANGES = {"knn_k": Range(1, 10_000), "probe_dims": Range(0, 1_000_000),
          "kmeans_pca": Range(0, 4096), "kmeans_runs": Range(1, 1000),
          "max_train": Range(1, 10**9), "max_test": Range(1, 10**9),
          "sample_seed": Range(0, 2**63 - 1), "batch_size": Range(1, 65536),
          "workers": Range(0, 256)}
PROTOCOLS = ("linear", "knn", "kmeans", "retrieval")


@dataclass(frozen=True)
class EvalSettings:
    protocols: tuple = ("linear", "knn", "kmeans")
    knn_k: int = 20  # neighbours of the weighted k-NN vote
    layers: str = "all"  # linear-probe layers, e.g. "conv3,penultimate"
    probe_dims: int = 0  # pooled dims of each conv layer's probe (0: the architecture's budget)
    kmeans_pca: int = 0  # PCA-whiten to this many dims before the k-means (0: plain features)
    kmeans_l2: bool = False  # L2-normalise the features before the k-means (no PCA)
    kmeans_runs: int = 5  # k-means seeds averaged over (mean and spread reported)
    max_train: int = 50_000  # a seeded subset of at most this many training images
    max_test: int = 10_000
    sample_seed: int = 0  # draws the subsets and seeds the k-means
    batch_size: int = 128
    workers: int = 2  # decoding processes

    def __post_init__(self):
        protocols = tuple(self.protocols.split(",")) if isinstance(self.protocols, str) \
            else tuple(self.protocols)
        object.__setattr__(self, "protocols", protocols)
        unknown = sorted(set(protocols) - set(PROTOCOLS))
        if unknown or not protocols:
            raise SettingsError(f"unknown protocols {unknown or list(protocols)}: "
                                f"choose from {PROTOCOLS}")
        check_ranges(self, RANGES)
