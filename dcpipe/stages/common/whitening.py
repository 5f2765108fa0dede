"""PCA with whitening (eigenvalue power -0.5) fitted from streamed rows, then L2 normalisation.

The authors' code trains faiss.PCAMatrix(D, 256, eigen_power=-0.5) on every feature held in
RAM. Here the mean and the D x D covariance are accumulated in float64 block by block, so only
D x D numbers are held whatever the number of rows: `CovarianceAccumulator` shifts rows by the
first block's mean before the products are summed (which keeps the cancellation in E[xx'] - mm'
harmless); `Moments` holds each block's own mean and centred products and merges two of them
exactly as the pairwise formula says (Chan, Golub & LeVeque 1979), in any bracketing the caller
fixes (the cluster stage: common/blocktree.py).
"""

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from dcpipe.shards.atomic import atomic_write_bytes
from dcpipe.stages.common.safeload import load_npy

EIGEN_POWER = -0.5
# Directions with (almost) no variance are not blown up to infinity by the whitening: eigenvalues
# are floored at this fraction of the largest (faiss uses no floor; it matters only for
# rank-deficient features, where it bounds the amplification to 1e4).
EIGEN_FLOOR = 1e-8


class CovarianceAccumulator:
    def __init__(self, dim: int):
        self.n = 0
        self.shift = None
        self.total = np.zeros(dim)
        self.products = np.zeros((dim, dim))

    def add(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        x = rows.astype(np.float64)
        if self.shift is None:
            self.shift = x.mean(axis=0)
        x -= self.shift
        self.n += len(x)
        self.total += x.sum(axis=0)
        self.products += x.T @ x

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n == 0:
            raise ValueError("PCA needs at least one row")
        centre = self.total / self.n
        return self.shift + centre, self.products / self.n - np.outer(centre, centre)


@dataclass(frozen=True)
class Moments:
    """Count, mean and centred cross-products (sum of (x - mean)(x - mean)') of some rows."""
    n: int
    mean: np.ndarray   # (D,) float64
    m2: np.ndarray     # (D, D) float64

    @classmethod
    def of(cls, rows: np.ndarray) -> "Moments | None":
        if not len(rows):
            return None
        x = rows.astype(np.float64)
        mean = x.mean(axis=0)
        x -= mean
        return cls(len(x), mean, x.T @ x)

    def __add__(self, other: "Moments") -> "Moments":
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * (other.n / n),
                       self.m2 + other.m2 + np.outer(delta, delta * (self.n * other.n / n)))

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean, self.m2 / self.n


@dataclass
class WhiteningPCA:
    mean: np.ndarray          # (D,) float64
    matrix: np.ndarray        # (d, D) float32: eigenvectors scaled by eigenvalue ** -0.5
    eigenvalues: np.ndarray   # (D,) float64, descending

    @property
    def out_dim(self) -> int:
        return self.matrix.shape[0]

    @classmethod
    def normalise_only(cls, dim: int) -> "WhiteningPCA":
        """No projection, no whitening: `apply` only L2-normalises (DeepCluster-v2's k-means)."""
        return cls(np.zeros(dim), np.eye(dim, dtype=np.float32), np.ones(dim))

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """Project, whiten and L2-normalise: (n, D) any float -> (n, d) float32 unit rows."""
        centred = rows.astype(np.float32)
        centred -= self.mean.astype(np.float32)
        y = centred @ self.matrix.T
        norms = np.sqrt(np.einsum("ij,ij->i", y, y))[:, None]
        y /= np.maximum(norms, np.finfo(np.float32).tiny)
        return y

    def save(self, path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, matrix=self.matrix, eigenvalues=self.eigenvalues,
                 eigen_power=np.float64(EIGEN_POWER))
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "WhiteningPCA":
        with load_npy(path) as z:
            return cls(mean=z["mean"], matrix=z["matrix"], eigenvalues=z["eigenvalues"])


def fit_whitening(acc: CovarianceAccumulator | Moments, out_dim: int) -> WhiteningPCA:
    mean, cov = acc.mean_and_covariance()
    # LAPACK's eigenvectors differ in their last bits with the BLAS thread count (torchrun gives
    # each rank one thread): one thread, so that every process finds the same PCA
    with threadpool_limits(1, user_api="blas"):
        eigenvalues, vectors = np.linalg.eigh(cov)
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    floor = max(eigenvalues[0], np.finfo(np.float64).tiny) * EIGEN_FLOOR
    scale = np.maximum(eigenvalues[:out_dim], floor) ** EIGEN_POWER
    matrix = (vectors[:, :out_dim] * scale).T.astype(np.float32)
    return WhiteningPCA(mean=mean, matrix=matrix, eigenvalues=eigenvalues)

