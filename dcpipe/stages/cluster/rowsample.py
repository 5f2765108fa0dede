"""A uniform random sample of valid store rows, without replacement, drawn chunk by chunk.

How many rows each store chunk contributes is one multivariate hypergeometric draw over the
chunks' valid counts (exactly the law of a uniform sample of that size), and which rows of a
chunk is a draw seeded by (seed, chunk). So the sample is the same whatever the read block size
or the order blocks are read in, and it costs O(number of chunks) memory: no array of N
indices. When the sample would hold every valid row it is simply every valid row.
"""

import numpy as np


class RowSample:
    """`size` valid rows (all of them if fewer), drawn by `seed` (one of common.seeds' streams)."""

    def __init__(self, valid: np.ndarray, chunk_rows: int, size: int, seed: int):
        self.valid = valid
        self.chunk_rows = chunk_rows
        self.seed = seed
        starts = np.arange(0, len(valid), chunk_rows)
        self.valid_counts = (np.add.reduceat(valid.astype(np.int64), starts) if len(valid)
                             else np.zeros(0, np.int64))
        self.everything = size >= self.valid_counts.sum()
        if self.everything:
            self.counts = self.valid_counts
        else:
            rng = np.random.default_rng([seed, 0])
            self.counts = rng.multivariate_hypergeometric(self.valid_counts, size)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.size = int(self.offsets[-1])

    def _chunk_rows(self, c: int) -> np.ndarray:
        first = c * self.chunk_rows
        local = np.flatnonzero(self.valid[first:first + self.chunk_rows])
        if len(local) > self.counts[c]:
            rng = np.random.default_rng([self.seed, 1, c])
            pick = rng.choice(len(local), self.counts[c], replace=False)
            local = local[np.sort(pick)]
        return first + local

    def rows_in(self, start: int, stop: int) -> np.ndarray:
        """Sampled rows in [start, stop), sorted; start is a chunk boundary."""
        chunks = range(start // self.chunk_rows, -(-min(stop, len(self.valid)) // self.chunk_rows))
        rows = [self._chunk_rows(c) for c in chunks if self.counts[c]]
        return np.concatenate(rows) if rows else np.zeros(0, np.int64)

    def position(self, start: int) -> int:
        """Index in the sample of the first sampled row at or after chunk boundary `start` (the
        sample's size at or past the store's end)."""
        return int(self.offsets[min(start // self.chunk_rows, len(self.counts))])

    def wanted_blocks(self, block_rows: int) -> np.ndarray:
        """Boolean per read block: does it hold any sampled row?"""
        return _any_per_block(self.counts, block_rows // self.chunk_rows)

    def unsampled_blocks(self, block_rows: int) -> np.ndarray:
        """Boolean per read block: does it hold a valid row outside the sample?"""
        return _any_per_block(self.valid_counts - self.counts, block_rows // self.chunk_rows)

    def by_chunk(self):
        """(sampled rows of a chunk, their first index in the sample) for every chunk with some."""
        for c in np.flatnonzero(self.counts):
            yield self._chunk_rows(c), int(self.offsets[c])


def _any_per_block(per_chunk: np.ndarray, chunks_per_block: int) -> np.ndarray:
    padded = np.zeros(-(-len(per_chunk) // chunks_per_block) * chunks_per_block, np.int64)
    padded[:len(per_chunk)] = per_chunk
    return padded.reshape(-1, chunks_per_block).sum(axis=1) > 0
