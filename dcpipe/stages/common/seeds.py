"""Every random stream in dcpipe, derived one way: SeedSequence([seed, round, domain, *keys]).

A domain names what the stream is for, so that no two uses of a seed share a stream and a new use
cannot silently reuse an old one. Keys (pass, shard, rank, chunk, ...) split a domain further.
"""
from enum import IntEnum

import numpy as np


class Domain(IntEnum):
    INIT = 1  # the random init of a network (round 0's model, the eval baseline)
    CLUSTER_SAMPLE = 2  # rows the k-means is fitted on
    PCA_SAMPLE = 3  # rows the PCA is fitted on
    KMEANS = 4  # faiss k-means initialisation
    EMPTY_SPLIT = 5  # which cluster an empty one splits
    COPIES = 6  # balanced sampler: copies of each sample
    SHARD_ORDER = 7  # balanced sampler: order of shards in a pass
    WINDOW = 8  # balanced sampler: shuffle within a window
    AUGMENT = 9  # crops and flips of a chunk of samples
    TOP_INIT = 10  # the fresh top layer of a round
    DROPOUT = 11  # dropout masks of a step
    EVAL_SUBSET = 12  # the labelled images an evaluation uses
    REPORT_SAMPLE = 13  # shards, clusters and queries a report shows
    COLOUR = 14  # DeepCluster-v2's colour distortion of a step's batch
    TOP_FIT = 15  # dropout masks of the passes a fitted top layer is fitted on
    BN_SAMPLE = 16  # images a round's BatchNorm statistics are recomputed over


def sequence(seed: int, round_index: int, domain: Domain, *keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, round_index, int(domain), *keys])


def rng(seed: int, round_index: int, domain: Domain, *keys: int) -> np.random.Generator:
    return np.random.default_rng(sequence(seed, round_index, domain, *keys))


def int_seed(seed: int, round_index: int, domain: Domain, *keys: int, bits: int = 63) -> int:
    """One integer seed (torch.manual_seed, faiss) from the same derivation."""
    state = sequence(seed, round_index, domain, *keys).generate_state(1, np.uint64)[0]
    return int(state) >> (64 - bits)
