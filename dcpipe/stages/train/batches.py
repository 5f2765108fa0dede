"""Training batches from the balanced sampler: decoded in loader workers, merged deterministically.

Each sampler stream runs in its own loader worker (one DataLoader with one worker per stream),
which cuts it into chunks of `chunk` draws, decodes them and applies the train transform with
the torch RNG seeded by (seed, rank, stream, chunk): a chunk's tensors are a function of its
number alone. The main process takes chunks round-robin from the streams (chunk 0 of each
stream, then chunk 1, ...; a finished stream drops out) and cuts that one sequence into batches
(images, labels, and each sample's shard and row: the memory bank's keys).
So the rank's sequence of training samples is fixed by the seed, and resuming at draw M only
needs M: each stream restarts at the chunk holding its next draw (`MergedBatches(start=M)`).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from dcpipe.shards.atomic import ctrl_c_deferred
from dcpipe.stages.common import seeds
from dcpipe.stages.common.images import BadImage, open_rgb
from dcpipe.stages.common.seeds import Domain
from dcpipe.stages.common.workererrors import handed_on, raised
from dcpipe.stages.train.balanced_sampler import BalancedSampler


class Batch(NamedTuple):
    images: torch.Tensor  # (n, *sample shape)
    labels: torch.Tensor  # (n,) int64, or (n, heads)
    ids: torch.Tensor  # (n, 2) int64: each sample's shard (ShardInfo.index) and row in it


class StreamChunks(IterableDataset):
    """Chunks (a Batch) of one stream, from chunk `first`."""

    def __init__(self, sampler: BalancedSampler, stream: int, first: int, chunk: int, transform):
        self.sampler, self.stream, self.first = sampler, stream, first
        self.chunk, self.transform = chunk, transform

    def __iter__(self):
        return handed_on(self._chunks())

    def _chunks(self):
        """Each chunk goes out once the next one is drawn: the stream's end, where its last
        tars are read to their end and verified, comes before its last chunk leaves."""
        draws = self.sampler.iter_stream(self.stream, self.first * self.chunk)
        ahead = list(itertools.islice(draws, self.chunk))
        for q in itertools.count(self.first):
            batch, ahead = ahead, list(itertools.islice(draws, self.chunk))
            if not batch:
                return
            torch.manual_seed(seeds.int_seed(self.sampler.seed, self.sampler.round_index,
                                             Domain.AUGMENT, self.sampler.rank, self.stream, q))
            images = torch.stack([self.transform(_decode(d)) for d in batch])
            ids = torch.tensor([(d.shard, d.row) for d in batch], dtype=torch.int64)
            yield Batch(images, _labels(batch), ids)


def _labels(batch) -> torch.Tensor:
    """(n,) labels, or (n, heads) when the draws carry further heads' labels."""
    if batch[0].more_labels:
        return torch.tensor([(d.label, *d.more_labels) for d in batch], dtype=torch.int64)
    return torch.tensor([d.label for d in batch], dtype=torch.int64)


def _decode(draw):
    try:
        return open_rgb(draw.image)
    except BadImage as exc:
        raise BadImage(f"shard {draw.shard:06d} row {draw.row} ({draw.key}): {exc}") from exc


def open_streams(sampler: BalancedSampler, chunk: int, transform, workers: int,
                 prefetch: int = 4, pin_memory: bool = False) -> Callable[[int, int], Iterator]:
    """`open(stream, first_chunk)` -> iterator of chunks: a 1-worker DataLoader per stream,
    or the dataset itself in this process when workers == 0. `transform`: PIL image -> tensor
    (the augmentation, e.g. models.train_transform), picklable for the workers. A DcpipeError
    in a stream (a damaged shard) is raised in this process by the `next` that meets it."""

    def open_stream(stream: int, first: int) -> Iterator:
        dataset = StreamChunks(sampler, stream, first, chunk, transform)
        if workers == 0:
            return raised(dataset)
        return raised(DataLoader(dataset, batch_size=None, num_workers=1,
                                 prefetch_factor=prefetch, pin_memory=pin_memory))

    return open_stream


class MergedBatches:
    """The streams' chunks round-robin as one sequence of samples, taken batch by batch."""

    def __init__(self, lengths: list[int], chunk: int, open_stream: Callable[[int, int], Iterator],
                 sample_shape: tuple, start: int = 0, label_shape: tuple = ()):
        self.lengths, self.chunk = list(lengths), chunk
        self.n_chunks = [math.ceil(n / chunk) for n in self.lengths]
        self.sample_shape, self.label_shape = tuple(sample_shape), tuple(label_shape)
        t, w, self._skip = self._locate(start)
        firsts = [min(t + (v < w), n) for v, n in enumerate(self.n_chunks)]
        self._streams = [open_stream(v, first) for v, first in enumerate(firsts)]
        self._schedule = self._order(t, w)
        self._parts, self._have = [], 0  # Batches pulled and not yet taken

    def _chunk_size(self, t: int, w: int) -> int:
        return min(self.chunk, self.lengths[w] - t * self.chunk)

    def _order(self, t0: int = 0, w0: int = 0) -> Iterator[tuple[int, int]]:
        for t in range(t0, max(self.n_chunks, default=0)):
            for w in range(w0 if t == t0 else 0, len(self.n_chunks)):
                if t < self.n_chunks[w]:
                    yield t, w

    def _locate(self, start: int) -> tuple[int, int, int]:
        """(chunk number, stream, offset in that chunk) of sample `start` of the sequence."""
        done = 0
        for t, w in self._order():
            size = self._chunk_size(t, w)
            if done + size > start:
                return t, w, start - done
            done += size
        if start != done:
            raise ValueError(f"start {start} is past the end of the round's {done} draws")
        return max(self.n_chunks, default=0), 0, 0

    def _pull(self) -> None:
        t, w = next(self._schedule, (None, None))
        if t is None:
            raise RuntimeError("asked for more samples than the round has")
        chunk = Batch(*next(self._streams[w]))
        if len(chunk.labels) != self._chunk_size(t, w):
            raise RuntimeError(f"stream {w} chunk {t}: {len(chunk.labels)} samples, planned "
                               f"{self._chunk_size(t, w)}: shards or labels changed under the run")
        self._parts.append(Batch(*(field[self._skip:] for field in chunk)))
        self._skip = 0
        self._have += len(self._parts[-1].labels)

    def take(self, n: int) -> Batch:
        """The next n samples (n may be 0: empty tensors of the right shape)."""
        while self._have < n:
            self._pull()
        if n == 0:
            return Batch(torch.zeros((0, *self.sample_shape)),
                         torch.zeros((0, *self.label_shape), dtype=torch.int64),
                         torch.zeros((0, 2), dtype=torch.int64))
        joined = Batch(*(torch.cat(fields) for fields in zip(*self._parts)))
        self._parts, self._have = [Batch(*(f[n:] for f in joined))], self._have - n
        return Batch(*(f[:n] for f in joined))

    def close(self) -> None:
        """Stop the loader workers, one Ctrl-C meanwhile raised once all are stopped."""
        with ctrl_c_deferred():
            for stream in self._streams:
                stream.close()
        self._streams = []
