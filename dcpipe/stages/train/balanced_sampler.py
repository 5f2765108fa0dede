"""Cluster-balanced resampling over a stream of shards (DeepCluster's uniform-over-pseudo-labels).

How a round's draws are made, and what is exactly true of them:

- Rates. With N labelled samples, k' non-empty clusters and `reassign` r, the round has
  P = ceil(r) passes over the shards, each drawing n = N*r/P samples in expectation. A sample of
  cluster c is emitted m times in a pass, m = floor(x) + Bernoulli(frac(x)), x = (n/k')/size_c,
  the Bernoulli seeded by (seed, pass, shard index) per row. So E[m] = x exactly, every non-empty
  cluster's expected draws are n/k' per pass (uniform over pseudo-labels, i.e. weight 1/size),
  the expected total is N*r, and the variance of a cluster's count is at most size_c/4 (below the
  multinomial's: a chi-square test against uniform is conservative). Label -1 is never drawn.
- Order. Pass p reads the shards in a permutation seeded by (seed, p). With `world` ranks, rank
  q keeps the shards at positions s (in the round's list) with s % world == q, in that order, and
  deals them round-robin to its `streams` (one per loader worker). A stream reads its shards in
  groups of `interleave`, row by row across the group's shards (row 0 of each, then row 1, ...),
  so shards holding one class each still mix. Every `window` rows read form one shuffle buffer:
  their copies are emitted in a permutation seeded by (seed, pass, group, window), then the
  buffer is refilled (a block shuffle: memory is at most `window` images; copies of one sample
  never leave their window, so a tiny cluster's draws in a pass come close together).
- State. Every random choice is keyed by counters, none is carried from draw to draw, so the
  whole state of a stream is how many draws it has emitted: `iter_stream(w, start)` finds the
  pass, group and window of draw `start` from the labels alone and resumes there, with the same
  draws as an uninterrupted run (it re-reads at most the current group's shards up to the window).
- Verification. A group's tars are read to their end once its last window is done, so every
  shard of ours read in a pass is checked against its manifest digest (`iter_shard`); a damaged
  one raises ShardCorrupt there (after its earlier draws were emitted: one read, no second pass).
- Memory: the labels and keys of one group of shards, one window of encoded images, k floats.
  No array of N anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from dcpipe.shards.reader import ShardInfo, iter_shard

from dcpipe.stages.common import seeds
from dcpipe.stages.common.labels import LabelsError, load_labels, read_index
from dcpipe.stages.common.seeds import Domain



class Draw(NamedTuple):
    image: bytes
    label: int
    shard: int  # ShardInfo.index
    row: int
    key: str
    more_labels: tuple = ()  # the sample's labels in the further heads (DeepCluster-v2)


def shard_labels(labels_dir, shard: ShardInfo, k: int | None) -> tuple[list[str], np.ndarray]:
    """(keys, labels) of a shard, checked against the shard's size and the label range [-1, k)
    (k None: the index's own k)."""
    keys, labels = load_labels(labels_dir, shard.name)
    if len(labels) != shard.n_samples:
        raise LabelsError(f"labels of shard {shard.name} have {len(labels)} rows, "
                          f"the shard has {shard.n_samples} samples: labels are from other shards")
    k = read_index(labels_dir)["k"] if k is None else k
    if len(labels) and (labels.min() < -1 or labels.max() >= k):
        raise LabelsError(f"labels of shard {shard.name} outside [-1, {k}): corrupt label file")
    return keys, labels


def cluster_sizes(shards: list[ShardInfo], labels_dir, k: int) -> np.ndarray:
    """Samples per cluster over `shards` (int64, length k); reads one label file at a time."""
    sizes = np.zeros(k, np.int64)
    for shard in shards:
        labels = shard_labels(labels_dir, shard, k)[1]
        sizes += np.bincount(labels[labels >= 0], minlength=k)
    return sizes


def interleave(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(slot, row) of every row of shards with `counts` rows, read row-major across the shards."""
    slot = np.repeat(np.arange(len(counts)), counts)
    row = np.concatenate([np.arange(n) for n in counts])
    order = np.lexsort((slot, row))
    return slot[order], row[order]


@dataclass
class GroupPlan:
    """One group of shards, label-only: its rows in read order and how often each is drawn."""
    shards: list[ShardInfo]
    keys: list[list[str]]
    slot: np.ndarray
    row: np.ndarray
    label: np.ndarray
    copies: np.ndarray
    more: np.ndarray  # (further heads, rows): their labels, in the same order

    def window_bounds(self, window: int) -> list[tuple[int, int]]:
        return [(a, min(a + window, len(self.row))) for a in range(0, len(self.row), window)]


class BalancedSampler:
    """The draws of one rank, as `streams` independent streams (see the module docstring)."""

    def __init__(self, shards: list[ShardInfo], labels_dir, sizes: np.ndarray, *,
                 reassign: float = 1.0, seed: int = 0, round_index: int = 0, rank: int = 0,
                 world: int = 1, streams: int = 1, interleave: int = 16, window: int = 4096,
                 balanced: bool = True, more_labels_dirs=()):
        """`balanced` False: every labelled sample is drawn `reassign` times in expectation
        (DeepCluster-v2's plain shuffled epoch) instead of uniformly over clusters.
        `more_labels_dirs`: further heads' label indexes, carried along with each draw."""
        if reassign <= 0:
            raise ValueError(f"reassign must be > 0, got {reassign}")
        if min(streams, interleave, window, world) < 1 or not 0 <= rank < world:
            raise ValueError("streams, interleave, window, world must be >= 1 and 0 <= rank < world")
        self.shards = list(shards)
        self.labels_dir = Path(labels_dir)
        self.more_labels_dirs = [Path(d) for d in more_labels_dirs]
        self.sizes = np.asarray(sizes, np.int64)
        self.k = len(self.sizes)
        self.seed, self.round_index, self.rank, self.world = seed, round_index, rank, world
        self.streams, self.interleave, self.window = streams, interleave, window
        n_labelled = int(self.sizes.sum())
        self.passes = max(1, math.ceil(reassign))
        self.expected_draws = n_labelled * reassign
        nonempty = self.sizes > 0
        self.rates = np.zeros(self.k)
        if n_labelled and balanced:
            per_cluster = self.expected_draws / self.passes / nonempty.sum()
            self.rates[nonempty] = per_cluster / self.sizes[nonempty]
        elif n_labelled:
            self.rates[nonempty] = reassign / self.passes

    # ------------------------------------------------------------ label-only plan
    def _rng(self, domain: Domain, *keys: int) -> np.random.Generator:
        return seeds.rng(self.seed, self.round_index, domain, *keys)

    def copies(self, shard: ShardInfo, labels: np.ndarray, p: int) -> np.ndarray:
        """How many times each row of `shard` is drawn in pass p."""
        x = np.where(labels >= 0, self.rates[np.maximum(labels, 0)], 0.0)
        u = self._rng(Domain.COPIES, p, shard.index).random(len(labels))
        whole = np.floor(x)
        return (whole + (u < x - whole)).astype(np.int64)

    def rank_shards(self, p: int) -> list[ShardInfo]:
        order = self._rng(Domain.SHARD_ORDER, p).permutation(len(self.shards))
        return [self.shards[i] for i in order if i % self.world == self.rank]

    def groups(self, w: int, p: int) -> list[list[ShardInfo]]:
        mine = self.rank_shards(p)[w::self.streams]
        return [mine[i:i + self.interleave] for i in range(0, len(mine), self.interleave)]

    def plan(self, group: list[ShardInfo], p: int) -> GroupPlan:
        keys, labels, copies, more = [], [], [], []
        for shard in group:
            shard_keys, shard_lab = shard_labels(self.labels_dir, shard, self.k)
            keys.append(shard_keys)
            labels.append(shard_lab)
            copies.append(self.copies(shard, shard_lab, p))
            more.append(np.stack([shard_labels(d, shard, None)[1] for d in self.more_labels_dirs])
                        if self.more_labels_dirs else np.zeros((0, len(shard_lab)), np.int32))
        counts = [len(lab) for lab in labels]
        slot, row = interleave(counts)
        flat = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)[slot] + row
        return GroupPlan(group, keys, slot, row, np.concatenate(labels)[flat],
                         np.concatenate(copies)[flat], np.concatenate(more, axis=1)[:, flat])

    def plans(self, w: int) -> Iterator[tuple[int, GroupPlan]]:
        for p in range(self.passes):
            for group in self.groups(w, p):
                yield p, self.plan(group, p)

    def stream_lengths(self) -> list[int]:
        """Draws of each stream of this rank over the whole round (labels only)."""
        return [sum(int(plan.copies.sum()) for _, plan in self.plans(w))
                for w in range(self.streams)]

    def planned_cluster_draws(self) -> np.ndarray:
        """Draws per cluster of this rank over the round (labels only), int64 length k."""
        total = np.zeros(self.k, np.int64)
        for w in range(self.streams):
            for _, plan in self.plans(w):
                drawn = plan.copies > 0
                total += np.bincount(plan.label[drawn], plan.copies[drawn], self.k).astype(np.int64)
        return total

    # ------------------------------------------------------------ the stream itself
    def iter_stream(self, w: int, start: int = 0) -> Iterator[Draw]:
        """Stream w's draws from its draw number `start` on (0 = the beginning of the round)."""
        position = 0
        for p, plan in self.plans(w):
            size = int(plan.copies.sum())
            if position + size <= start:
                position += size
                continue
            reader = _GroupReader(plan)
            for j, (a, b) in enumerate(plan.window_bounds(self.window)):
                size = int(plan.copies[a:b].sum())
                if position + size > start:
                    yield from self._window(plan, reader, p, j, a, b, max(0, start - position))
                position += size
            reader.finish()

    def _window(self, plan: GroupPlan, reader: _GroupReader, p: int, j: int, a: int, b: int,
                skip: int) -> Iterator[Draw]:
        images = reader.read(a, b)
        entries = np.repeat(np.arange(a, b), plan.copies[a:b])
        order = self._rng(Domain.WINDOW, p, plan.shards[0].index, j).permutation(len(entries))
        for e in entries[order[skip:]].tolist():
            shard = plan.shards[plan.slot[e]]
            row = int(plan.row[e])
            yield Draw(images[e], int(plan.label[e]), shard.index, row, plan.keys[plan.slot[e]][row],
                       tuple(plan.more[:, e].tolist()))


class _GroupReader:
    """Reads a group's tars in the plan's order, keeping only the images of drawn rows."""

    def __init__(self, plan: GroupPlan):
        self.plan = plan
        self.samples = [iter_shard(shard.path, shard.sha256) for shard in plan.shards]
        self.next_row = [0] * len(plan.shards)

    def read(self, a: int, b: int) -> dict[int, bytes]:
        """Images of entries [a, b) with copies > 0 (rows before them are read and dropped)."""
        wanted = np.flatnonzero(self.plan.copies[a:b] > 0) + a
        return {int(e): self._image(int(self.plan.slot[e]), int(self.plan.row[e])) for e in wanted}

    def _image(self, slot: int, row: int) -> bytes:
        shard = self.plan.shards[slot]
        sample = None
        while self.next_row[slot] <= row:
            sample = next(self.samples[slot], None)
            if sample is None:
                raise LabelsError(f"shard {shard.name} ends before row {row} that its labels list")
            self.next_row[slot] += 1
        expected = self.plan.keys[slot][row]
        if sample.key != expected:
            raise LabelsError(f"shard {shard.name} row {row}: key {sample.key!r}, labels say "
                              f"{expected!r}: labels and shard disagree")
        if sample.image is None:
            raise LabelsError(f"shard {shard.name} row {row} ({expected}) has a label but no "
                              f"readable image: {sample.error}")
        return sample.image

    def finish(self) -> None:
        """Read every tar of the group to its end: that is where iter_shard checks its digest."""
        for samples in self.samples:
            for _ in samples:
                pass
