"""Float totals over a store's read blocks that do not depend on how many processes made them.

Float addition is not associative: "each rank sums its blocks, then the ranks' sums are added"
gives other last bits than one process summing every block. Here a total is the value of one
fixed binary tree over the block indices: a leaf is a block's own partial (the same bits on
whichever rank reads that block), node (j, i) covers blocks [i 2^j, (i+1) 2^j) and is
combine(left child, right child), and a child without any leaf contributes nothing.

One process streams the tree with a stack of at most log2(blocks) + 1 partials (`BlockTree`).
A rank owning a contiguous range of blocks (`owned_blocks`) computes the nodes of the maximal
aligned ranges inside it (`RankTree`); the ranks exchange those nodes and every rank completes
the same tree (`tree_total`): the same bits for any number of ranks, one included.
"""

from typing import Any, Callable

Combine = Callable[[Any, Any], Any]


def owned_blocks(n_blocks: int, rank: int, world: int) -> range:
    """Rank's contiguous share of the blocks: depends only on the block count and world size."""
    return range(n_blocks * rank // world, n_blocks * (rank + 1) // world)


def aligned_ranges(blocks: range) -> list[range]:
    """The maximal ranges [i 2^j, (i+1) 2^j) that tile `blocks`, in order."""
    out, start = [], blocks.start
    while start < blocks.stop:
        size = start & -start if start else 1 << (blocks.stop - 1).bit_length()
        while start + size > blocks.stop:
            size //= 2
        out.append(range(start, start + size))
        start += size
    return out


def _level(left: range, right: range) -> int:
    """Level of the smallest tree node holding both (disjoint, aligned or single) ranges."""
    return ((left.stop - 1) ^ right.start).bit_length()


class BlockTree:
    """The tree's total of values added in block order: single blocks or aligned ranges.

    Two neighbours on the stack are combined as soon as a later value lies outside their common
    node, i.e. when their own node level is below the new one's; levels on the stack strictly
    decrease upwards, so the stack never holds more than one entry per level.
    """

    def __init__(self, combine: Combine):
        self.combine = combine
        self.stack: list[tuple[range, Any]] = []

    def add(self, blocks: range | int, value) -> None:
        """`value` of a block (an int) or of an aligned range after everything added so far;
        None adds nothing."""
        if value is None:
            return
        blocks = range(blocks, blocks + 1) if isinstance(blocks, int) else blocks
        while (len(self.stack) >= 2
               and _level(self.stack[-2][0], self.stack[-1][0]) < _level(self.stack[-1][0], blocks)):
            self._combine_top()
        self.stack.append((blocks, value))

    def total(self):
        """The root's value (None when nothing was added)."""
        while len(self.stack) >= 2:
            self._combine_top()
        return self.stack[0][1] if self.stack else None

    def _combine_top(self) -> None:
        (left, a), (right, b) = self.stack[-2:]
        self.stack[-2:] = [(range(left.start, right.stop), self.combine(a, b))]


class RankTree:
    """One rank's part of a BlockTree: the totals of the aligned ranges tiling its blocks."""

    def __init__(self, combine: Combine, blocks: range):
        self.combine = combine
        self.ranges = aligned_ranges(blocks)
        self.done: list[tuple[range, Any]] = []
        self.current = BlockTree(combine)

    def add(self, block: int, value) -> None:
        """A block's value, blocks in increasing order, all inside the rank's blocks."""
        while block >= self.ranges[len(self.done)].stop:
            self._close()
        self.current.add(block, value)

    def nodes(self) -> list[tuple[range, Any]]:
        while len(self.done) < len(self.ranges):
            self._close()
        return self.done

    def _close(self) -> None:
        self.done.append((self.ranges[len(self.done)], self.current.total()))
        self.current = BlockTree(self.combine)


def tree_total(group, part: RankTree):
    """The whole tree's value on every rank, from every rank's part (group: ProcessGroup)."""
    tree = BlockTree(part.combine)
    for nodes in group.all_gather_object(part.nodes()):
        for blocks, value in nodes:
            tree.add(blocks, value)
    return tree.total()
