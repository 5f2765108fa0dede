"""`dcpipe eval`'s settings: the only place their defaults live (the CLI's flags show them)."""
from dataclasses import dataclass

from dcpipe.errors import SettingsError

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
        if min(self.knn_k, self.max_train, self.max_test, self.batch_size, self.kmeans_runs) < 1 \
                or min(self.workers, self.probe_dims, self.kmeans_pca) < 0:
            raise SettingsError("knn_k, max_train, max_test, batch_size, kmeans_runs must be >= 1; "
                                "workers, probe_dims and kmeans_pca >= 0")
