"""[train] batch_size = 0: the batch each collection size gets, and the lr that goes with it."""
import pytest

from dcpipe.stages.train.batchsize import MIN_STEPS, REFERENCE, auto_batch, resolve


@pytest.mark.parametrize("samples, batch", [
    (45_000, 256),  # CIFAR-10's collection: trains exactly as at batch 256
    (MIN_STEPS * 256, 256), (MIN_STEPS * 256 - 1, 128),
    (3_000, 64),  # a few thousand photos: 47 steps, not 12
    (360, 32), (1, 32),  # too few for MIN_STEPS at any choice: the smallest
])
def test_the_largest_batch_that_gives_a_round_its_minimum_steps(samples, batch):
    assert auto_batch(samples) == batch


def test_the_lr_scales_with_the_automatic_batch_only():
    assert resolve(0, 0.3, 45_000) == (256, 0.3)
    assert resolve(0, 0.3, 3_000) == (64, pytest.approx(0.3 * 64 / REFERENCE))
    assert resolve(64, 0.3, 45_000) == (64, 0.3)  # a batch the user chose keeps the user's lr
