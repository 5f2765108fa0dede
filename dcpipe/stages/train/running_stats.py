"""BatchNorm running statistics recomputed at the end of a round ([train] bn_images).

Training leaves running statistics that are a momentum-0.1 average of its last batches:
augmented crops (v2: two full and two half-size crops with colour distortion) drawn from the
tail of a pass's shard order. The extract stage, the k-means and every evaluation see centre
crops of whole images instead. Here the statistics become the plain average over a seeded
random sample of the round's images under the eval transform (what "precise BN" does). Training
itself is unchanged: in train mode BatchNorm normalises by each batch's own statistics.

The result depends on the weights, the shards and the seed alone (the statistics are reset
first), so a round killed during it and resumed from its last checkpoint recomputes the same.
Each rank averages over a sample of its own shards; the ranks' averages are then weighted by
their batch counts.
"""
from __future__ import annotations

import random

import torch

from dcpipe.shards.reader import Sample, ShardInfo, iter_shard
from dcpipe.stages.common.distributed import ProcessGroup
from dcpipe.stages.common.images import open_rgb
from dcpipe.stages.common.precision import autocast
from dcpipe.stages.train.objectives import channels_last

READ_FACTOR = 4  # rows read per row kept: a uniform sample without reading the whole collection


def sample_images(shards: list[ShardInfo], n: int, rng: random.Random) -> list[Sample]:
    """Up to n samples with an image, uniform (reservoir sampling) over the rows of the shards
    read: whole shards, in a random order, until READ_FACTOR * n images are seen. Each read shard
    is read to its end, so ours are verified against their manifest digest as training's are."""
    order = list(shards)
    rng.shuffle(order)
    kept, seen = [], 0
    for shard in order:
        if seen >= READ_FACTOR * n:
            break
        for sample in iter_shard(shard.path, shard.sha256, shard.label_field):
            if sample.image is None:  # a row the shard stage could not fetch or decode
                continue
            seen += 1
            if len(kept) < n:
                kept.append(sample)
            else:
                slot = rng.randrange(seen)
                if slot < n:
                    kept[slot] = sample
    rng.shuffle(kept)  # batches that mix shards
    return kept


def batchnorms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def recompute(model, images: list[bytes], transform, batch_size: int, ctx: ProcessGroup,
              dtype=None) -> int:
    """Every BatchNorm's running mean and variance as the average of its batch statistics over
    `images` (this rank's), then over the ranks; the model comes back in eval mode. Returns the
    batches averaged over, all ranks together (0: too few images, the statistics left as they
    were). A last batch of one image is left out (BatchNorm1d has no variance of one row)."""
    if len(images) % batch_size == 1:
        images = images[:-1]
    norms = batchnorms(model)
    mine = -(-len(images) // batch_size)
    total = int(ctx.sum(torch.tensor(mine)))
    if total == 0 or not norms:
        return 0
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch counts the same
        m.train()
    device = next(model.parameters()).device
    with torch.no_grad(), autocast(device, dtype):
        for start in range(0, len(images), batch_size):
            part = images[start:start + batch_size]
            model.embed(channels_last(torch.stack([transform(open_rgb(b)) for b in part]).to(device)))
    model.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        for buffer in (m.running_mean, m.running_var):
            buffer.copy_(ctx.sum(buffer * mine) / total)
        m.num_batches_tracked.fill_(total)
    return total
