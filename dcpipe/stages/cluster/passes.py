"""The streaming passes of the cluster stage: each reads the store block by block.

1. PCA statistics over the PCA sample;  2. the k-means sample, projected (the only O(sample)
array; its rows are later assigned from RAM);  3. every valid row outside the sample, assigned;
4. (only with empty clusters) the rows of the clusters being split. Blocks without a row a pass
needs are not read: with a sample of every row, pass 3 reads nothing.
"""

from typing import Callable

import numpy as np
from tqdm import tqdm

from dcpipe.stages.common.whitening import CovarianceAccumulator, WhiteningPCA, fit_whitening
from dcpipe.stages.cluster.rowsample import RowSample
from dcpipe.stages.common.featurestore import FeatureStore
from dcpipe.stages.common.featurereader import StoreError, iter_blocks

# assign(x) -> (int32 label per row of x, float32 squared distance to what it was assigned to)
Assigner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
SEARCH_BATCH = 65536  # sampled rows searched at once


def _blocks(store: FeatureStore, block: int, wanted, desc: str, progress: bool):
    total = int(np.sum(wanted)) if wanted is not None else -(-store.n_rows // block)
    with tqdm(total=total, desc=desc, unit="block", disable=not progress, leave=False) as bar:
        for start, feats in iter_blocks(store, block, wanted):
            yield start, feats
            bar.update()


def finite(x: np.ndarray, first_row: int) -> np.ndarray:
    """x itself; a NaN or inf among valid rows would silently become label -1 in faiss."""
    if not np.isfinite(x).all():
        raise StoreError(f"non-finite features among valid rows of the block at row {first_row}")
    return x


def project(pca: WhiteningPCA, feats: np.ndarray, first_row: int) -> np.ndarray:
    return finite(pca.apply(feats), first_row)


def fit_pca(store: FeatureStore, sample: RowSample, block: int, out_dim: int, progress: bool) -> WhiteningPCA:
    acc = CovarianceAccumulator(store.dim)
    for start, feats in _blocks(store, block, sample.wanted_blocks(block), "pca", progress):
        rows = sample.rows_in(start, start + block)
        acc.add(finite(feats[rows - start], start))
    return fit_whitening(acc, out_dim)


def project_sample(store: FeatureStore, sample: RowSample, block: int, pca: WhiteningPCA,
                   progress: bool) -> np.ndarray:
    """(sample size, d) float32: the sampled rows in row order, projected and normalised."""
    x = np.empty((sample.size, pca.out_dim), dtype=np.float32)
    for start, feats in _blocks(store, block, sample.wanted_blocks(block), "sample", progress):
        rows = sample.rows_in(start, start + block)
        first = sample.position(start)
        x[first:first + len(rows)] = project(pca, feats[rows - start], start)
    return x


def assign_sample(x: np.ndarray, sample: RowSample, assign: Assigner, labels: np.ndarray) -> float:
    """Label the sampled rows from their projected features, still in RAM: no second read."""
    found = np.empty(len(x), dtype=np.int32)
    total = 0.0
    for first in range(0, len(x), SEARCH_BATCH):
        part, dist = assign(x[first:first + SEARCH_BATCH])
        found[first:first + len(part)] = part
        total += float(dist.sum(dtype=np.float64))
    for rows, first in sample.by_chunk():
        labels[rows] = found[first:first + len(rows)]
    return total


def assign_rest(store: FeatureStore, valid: np.ndarray, sample: RowSample, block: int,
                pca: WhiteningPCA, assign: Assigner, labels: np.ndarray, progress: bool) -> float:
    """Label every valid row outside the sample, streaming only the blocks holding one."""
    total = 0.0
    for start, feats in _blocks(store, block, sample.unsampled_blocks(block), "assign", progress):
        keep = valid[start:start + len(feats)].astype(bool)
        keep[sample.rows_in(start, start + len(feats)) - start] = False
        if keep.any():
            found, dist = assign(project(pca, feats[keep], start))
            labels[start + np.flatnonzero(keep)] = found
            total += float(dist.sum(dtype=np.float64))
    return total


def row_stream(store: FeatureStore, block: int, pca: WhiteningPCA, progress: bool):
    """stream(rows): projected features of the given sorted rows, reading only their blocks."""
    def stream(rows: np.ndarray):
        wanted = np.zeros(-(-store.n_rows // block), dtype=bool)
        wanted[np.unique(rows // block)] = True
        for start, feats in _blocks(store, block, wanted, "split", progress):
            part = rows[np.searchsorted(rows, start):np.searchsorted(rows, start + block)]
            yield part, project(pca, feats[part - start], start)
    return stream
