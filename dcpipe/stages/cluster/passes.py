"""The streaming passes of the cluster stage: each reads this rank's blocks of the store.

1. PCA statistics over the PCA sample;  2. the k-means sample, projected (the only O(sample)
array; its rows are later assigned from RAM);  3. every valid row assigned, block by block: the
sampled rows from RAM, the others read;  4. (only with empty clusters) the rows of the clusters
being split. Blocks without a row a pass needs are not read: with a sample of every row, pass 3
reads nothing.

Under torchrun each rank takes a contiguous share of the read blocks (blocktree.owned_blocks;
alone: all of them). Every pass works block by block, on batches that depend on the block alone
(faiss and BLAS may round a row otherwise in another batch), so a block gives the same bits on
whichever rank reads it; float totals over blocks go through blocktree's fixed tree, labels and
per-row values through exact reductions (max of -1-filled labels, sum of 0-filled floats).
"""

import operator
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
from tqdm import tqdm

from dcpipe.stages.cluster.rowsample import RowSample
from dcpipe.stages.common.blocktree import RankTree, owned_blocks, tree_total
from dcpipe.stages.common.distributed import ProcessGroup
from dcpipe.stages.common.featurereader import StoreError, iter_blocks
from dcpipe.stages.common.featurestore import FeatureStore
from dcpipe.stages.common.whitening import Moments, WhiteningPCA, fit_whitening

# assign(x) -> (int32 label per row of x, float32 squared distance to what it was assigned to)
Assigner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Share:
    """This rank's blocks of `block` rows (whole store chunks) and how it reads them."""
    store: FeatureStore
    block: int
    group: ProcessGroup
    progress: bool

    @property
    def n_blocks(self) -> int:
        return -(-self.store.n_rows // self.block)

    @cached_property
    def owned(self) -> range:
        return owned_blocks(self.n_blocks, self.group.rank, self.group.world)

    def rows_of(self, rank: int) -> tuple[int, int]:
        """First and stop row of a rank's blocks (the last block's stop may pass the store's end)."""
        blocks = owned_blocks(self.n_blocks, rank, self.group.world)
        return blocks.start * self.block, blocks.stop * self.block

    def read(self, wanted: np.ndarray, desc: str):
        """(first row, features) of the wanted blocks among this rank's, in row order."""
        mine = np.zeros(self.n_blocks, dtype=bool)
        mine[self.owned.start:self.owned.stop] = wanted[self.owned.start:self.owned.stop]
        with tqdm(total=int(mine.sum()), desc=desc, unit="block", disable=not self.progress,
                  leave=False) as bar:
            for start, feats in iter_blocks(self.store, self.block, mine):
                yield start, feats
                bar.update()


def finite(x: np.ndarray, first_row: int) -> np.ndarray:
    """x itself; a NaN or inf among valid rows would silently become label -1 in faiss."""
    if not np.isfinite(x).all():
        raise StoreError(f"non-finite features among valid rows of the block at row {first_row}")
    return x


def project(pca: WhiteningPCA, feats: np.ndarray, first_row: int) -> np.ndarray:
    return finite(pca.apply(feats), first_row)


def fit_pca(share: Share, sample: RowSample, out_dim: int) -> WhiteningPCA:
    """PCA-whitening from the moments of the sampled rows, merged over blocks in blocktree's tree."""
    part = RankTree(operator.add, share.owned)
    for start, feats in share.read(sample.wanted_blocks(share.block), "pca"):
        rows = sample.rows_in(start, start + share.block)
        part.add(start // share.block, Moments.of(finite(feats[rows - start], start)))
    return fit_whitening(tree_total(share.group, part), out_dim)


@dataclass
class SampleRows:
    """Projected sampled rows held in RAM: x[i] is row offset + i of the sample (in row order).
    Rank 0 holds the whole sample (the k-means is fitted there), every other rank its blocks'."""
    x: np.ndarray
    offset: int

    def of_rows(self, sample: RowSample, start: int, stop: int) -> np.ndarray:
        """The sampled rows among store rows [start, stop) (chunk boundaries)."""
        return self.x[sample.position(start) - self.offset:sample.position(stop) - self.offset]


def project_sample(share: Share, sample: RowSample, pca: WhiteningPCA) -> SampleRows:
    spans = [tuple(map(sample.position, share.rows_of(r))) for r in range(share.group.world)]
    first, stop = spans[share.group.rank]
    whole = share.group.rank == 0
    held = SampleRows(np.empty((sample.size if whole else stop - first, pca.out_dim), np.float32),
                      0 if whole else first)
    for start, feats in share.read(sample.wanted_blocks(share.block), "sample"):
        rows = sample.rows_in(start, start + share.block)
        held.of_rows(sample, start, start + share.block)[:] = project(pca, feats[rows - start], start)
    share.group.gather_rows(held.x, held.x if whole else None, spans)
    return held


def assign_rows(share: Share, valid: np.ndarray, sample: RowSample, held: SampleRows,
                pca: WhiteningPCA, assign: Assigner, labels: np.ndarray) -> float:
    """Label every valid row of this rank's blocks (labels of other ranks' rows are left alone);
    return the sum of squared distances over every rank's rows.

    A block's valid rows are searched as one batch, its sampled rows (from RAM) first, then the
    others (read); its distances are summed in float64, the blocks' sums in blocktree's tree.
    """
    part = RankTree(operator.add, share.owned)
    reads = share.read(sample.unsampled_blocks(share.block), "assign")
    read = next(reads, None)
    for b in share.owned:
        start, stop = b * share.block, (b + 1) * share.block
        rows = [sample.rows_in(start, stop)]
        x = [held.of_rows(sample, start, stop)]
        if read is not None and read[0] == start:
            keep = valid[start:stop].astype(bool)
            keep[rows[0] - start] = False
            rows.append(start + np.flatnonzero(keep))
            x.append(project(pca, read[1][keep], start))
            read = next(reads, None)
        rows = np.concatenate(rows)
        if len(rows):
            found, dist = assign(np.concatenate(x))
            labels[rows] = found
            part.add(b, float(dist.sum(dtype=np.float64)))
    return tree_total(share.group, part) or 0.0


def row_dots(share: Share, pca: WhiteningPCA):
    """dots(rows, vectors, which): x_row . vectors[which[i]] (float64) for sorted store rows, on
    every rank; each rank reads only its own blocks holding one of the rows."""
    def dots(rows: np.ndarray, vectors: np.ndarray, which: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rows))
        wanted = np.zeros(share.n_blocks, dtype=bool)
        wanted[np.unique(rows // share.block)] = True
        for start, feats in share.read(wanted, "split"):
            lo, hi = np.searchsorted(rows, [start, start + share.block])
            x = project(pca, feats[rows[lo:hi] - start], start).astype(np.float64)
            out[lo:hi] = np.einsum("ij,ij->i", x, vectors[which[lo:hi]])
        return share.group.reduce_array(out)  # x + 0.0 == x: the owner's values, exactly
    return dots
