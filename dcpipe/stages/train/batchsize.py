"""[train] batch_size = 0: the batch follows the collection. At 256 an epoch of 3,000 images is
12 steps, and 30 such rounds left the features no better than the random init on the probes
(docs/benchmarks.md, "v2 on a few thousand images"); a smaller batch gives a small collection
steps to learn from, and the lr scales with it (the linear rule: `lr` is the rate for a batch of
REFERENCE images), so a large collection trains exactly as at batch 256."""

REFERENCE = 256
CHOICES = (256, 128, 64, 32)  # largest first
MIN_STEPS = 40  # a round's steps below which the next smaller batch is taken


def auto_batch(samples_per_rank: int) -> int:
    """The largest choice that gives a round of `samples_per_rank` draws MIN_STEPS steps; the
    smallest choice when none does."""
    for size in CHOICES:
        if samples_per_rank >= MIN_STEPS * size:
            return size
    return CHOICES[-1]


def resolve(batch_size: int, lr: float, samples_per_rank: int) -> tuple[int, float]:
    """(batch, lr) a round trains with: as configured, or for batch_size 0 the automatic batch
    and the lr scaled to it."""
    if batch_size:
        return batch_size, lr
    size = auto_batch(samples_per_rank)
    return size, lr * size / REFERENCE
