"""Training batches: decoded in loader workers, merged deterministically, resumable at any sample."""
import numpy as np
import pytest
import torch

from dcpipe.stages.train.balanced_sampler import BalancedSampler, cluster_sizes
from dcpipe.stages.common.models import train_transform
from dcpipe.stages.train.batches import MergedBatches, open_streams

from dcpipe.shards.reader import ShardCorrupt
from support.damage import flip_in_member
from support.interrupting import run_interrupted
from support.labelled_shards import label_of_pixels, make_collection

K, SIZE, CHUNK = 12, 16, 8


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    rng = np.random.default_rng(5)
    labels = [rng.integers(-1, K, n).astype(np.int32) for n in (70, 40, 55, 9, 30)]
    return make_collection(tmp_path_factory.mktemp("batches"), labels, K, image_size=SIZE)


def _batches(collection, workers, start=0, streams=2):
    shards, labels_dir = collection
    sampler = BalancedSampler(shards, labels_dir, cluster_sizes(shards, labels_dir, K),
                              streams=streams, interleave=2, window=50, seed=3)
    lengths = sampler.stream_lengths()
    opened = open_streams(sampler, CHUNK, train_transform(SIZE), workers)
    return MergedBatches(lengths, CHUNK, opened, (3, SIZE, SIZE), start=start), sum(lengths)


def _take_all(batches, total, sizes=(13, 0, 29, 7)):
    """Everything left, in batches of varied sizes (0 included)."""
    images, labels, taken = [], [], 0
    for i in range(total + 1):
        n = min(sizes[i % len(sizes)], total - taken)
        x, y, _ = batches.take(n)
        assert x.shape == (n, 3, SIZE, SIZE) and y.shape == (n,)
        images.append(x)
        labels.append(y)
        taken += n
    batches.close()
    assert taken == total
    return torch.cat(images), torch.cat(labels)


def test_every_sample_from_the_workers_carries_its_own_label(collection):
    images, labels = _take_all(*_batches(collection, workers=2))
    assert len(labels) > 150 and (labels >= 0).all()
    assert [label_of_pixels(x) for x in images] == labels.tolist()


def test_a_resumed_sequence_is_the_tail_of_the_full_one(collection):
    """Same tensors (data and augmentation) in-process or in workers, from 0 or from sample M."""
    full_x, full_y = _take_all(*_batches(collection, workers=0))
    for start in (1, CHUNK * 3 + 5, len(full_y) - 2):
        batches, total = _batches(collection, workers=2, start=start)
        x, y = _take_all(batches, total - start)
        assert torch.equal(y, full_y[start:]) and torch.equal(x, full_x[start:])


def test_asking_past_the_end_is_an_error(collection):
    batches, total = _batches(collection, workers=0, streams=1)
    batches.take(total)
    with pytest.raises(RuntimeError, match="more samples than the round has"):
        batches.take(1)
    with pytest.raises(ValueError, match="past the end"):
        _batches(collection, workers=0, start=total + 1)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_damaged_tail_is_found_before_the_last_chunk_even_on_a_chunk_boundary(tmp_path,
                                                                                workers):
    """Every labelled row drawn once (plain epoch): 2 * CHUNK draws, a chunk boundary at the
    stream's end; the flipped byte sits in shard 1's last sample, unlabelled, so never drawn:
    only reading that tar to its end finds it."""
    labels = [np.arange(CHUNK, dtype=np.int32), np.r_[np.arange(CHUNK), -1].astype(np.int32)]
    shards, labels_dir = make_collection(tmp_path, labels, K, image_size=SIZE)
    flip_in_member(shards[1].path, nth=CHUNK, at=20)
    sampler = BalancedSampler(shards, labels_dir, cluster_sizes(shards, labels_dir, K),
                              balanced=False, interleave=2, seed=3)
    assert sampler.stream_lengths() == [2 * CHUNK]
    batches = MergedBatches([2 * CHUNK], CHUNK, open_streams(sampler, CHUNK, train_transform(SIZE),
                                                             workers), (3, SIZE, SIZE))
    with pytest.raises(ShardCorrupt, match="000001.tar"):
        batches.take(2 * CHUNK)
    batches.close()


MERGED_THEN_CLOSED = """
chunk = (torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64))
batches = MergedBatches([4, 4], 2, lambda stream, first: raised(Loader(sys.argv[1], chunk)), (3, 4, 4))
batches.take(3)
try:
    batches.close()
except KeyboardInterrupt:
    EVENTS.append("interrupted")
"""


def test_close_stops_every_stream_then_raises_a_ctrl_c_met_on_the_way():
    """Each stream's loader is stopped by close() itself (not by a finaliser, where the Ctrl-C
    is lost), and the one Ctrl-C each stop met is raised once, after the last."""
    script = "from dcpipe.stages.train.batches import MergedBatches\n" + MERGED_THEN_CLOSED
    assert run_interrupted(script, "stop") == "started started stopped stopped interrupted"
