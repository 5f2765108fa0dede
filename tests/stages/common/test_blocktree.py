import operator

import numpy as np
import pytest

from dcpipe.stages.common.blocktree import (BlockTree, RankTree, aligned_ranges, owned_blocks,
                                            tree_total)


class Alone:
    """A world of one (common.distributed.ProcessGroup's interface)."""

    def all_gather_object(self, obj):
        return [obj]


class Gathered:
    """Hands tree_total every rank's nodes, as all_gather_object would."""

    def __init__(self, parts):
        self.parts = parts

    def all_gather_object(self, obj):
        return [part.nodes() for part in self.parts]


def by_definition(values: list, lo: int, size: int):
    """The tree's value of blocks [lo, lo + size) from its definition (None: no leaf)."""
    if size == 1:
        return values[lo] if lo < len(values) else None
    left, right = by_definition(values, lo, size // 2), by_definition(values, lo + size // 2, size // 2)
    return left if right is None else right if left is None else left + right


def leaves(n_blocks: int, seed: int) -> list:
    """Floats of wildly different magnitudes (so that the order of additions shows in the last
    bits), about a third of the blocks without a value."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-8, 9, n_blocks)
    return [None if rng.random() < 0.3 else float(v) for v in values]


@pytest.mark.parametrize("n_blocks", [1, 2, 5, 13, 64, 100, 257])
def test_streamed_total_is_the_tree_of_its_definition_bit_for_bit(n_blocks):
    values = leaves(n_blocks, n_blocks)
    tree = BlockTree(operator.add)
    for b, v in enumerate(values):
        tree.add(b, v)
        assert len(tree.stack) <= n_blocks.bit_length()  # one partial per level at most
    assert tree.total() == by_definition(values, 0, 1 << (n_blocks - 1).bit_length())


@pytest.mark.parametrize("n_blocks", [1, 7, 13, 100, 257])
def test_any_number_of_ranks_gives_the_same_bits(n_blocks):
    values = leaves(n_blocks, 7 * n_blocks)
    totals, naive = set(), set()
    for world in range(1, 9):
        parts = []
        for rank in range(world):
            part = RankTree(operator.add, owned_blocks(n_blocks, rank, world))
            for b in owned_blocks(n_blocks, rank, world):
                part.add(b, values[b])
            parts.append(part)
        totals.add(tree_total(Gathered(parts), parts[0]))
        naive.add(sum(sum(v for v in values[share.start:share.stop] if v is not None)
                      for share in (owned_blocks(n_blocks, r, world) for r in range(world))))
    assert totals == {by_definition(values, 0, 1 << (n_blocks - 1).bit_length())}
    # "each rank sums its blocks, then the ranks' sums are added" moves with the world size
    assert n_blocks < 100 or len(naive) > 1


def test_ranks_split_the_blocks_into_contiguous_ranges_covering_all():
    for n_blocks, world in [(0, 2), (1, 3), (10, 3), (1000, 7)]:
        shares = [owned_blocks(n_blocks, r, world) for r in range(world)]
        assert [b for share in shares for b in share] == list(range(n_blocks))
    assert aligned_ranges(range(3, 13)) == [range(3, 4), range(4, 8), range(8, 12), range(12, 13)]
    assert aligned_ranges(range(0, 5)) == [range(0, 4), range(4, 5)] and aligned_ranges(range(4, 4)) == []


def test_nothing_added_totals_none():
    assert BlockTree(operator.add).total() is None
    part = RankTree(operator.add, range(0, 4))
    part.add(2, None)
    assert tree_total(Alone(), part) is None
