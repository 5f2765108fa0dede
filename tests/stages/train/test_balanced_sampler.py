"""The cluster-balanced stream sampler on real shards and label files (tiny flat-colour images)."""
import io

import numpy as np
import pytest
from PIL import Image
from scipy.stats import chisquare

from dcpipe.shards.naming import make_key
from dcpipe.stages.common.labels import LabelsError, write_labels
from dcpipe.stages.train.balanced_sampler import BalancedSampler, cluster_sizes

from support.labelled_shards import PALETTE, WHITE, make_collection, skewed_labels

# A heavily skewed clustering: 1500 samples down to 1, one empty cluster, some unlabelled rows.
SIZES = [1500, 800, 400, 200, 100, 50, 25, 12, 6, 3, 2, 1, 0]
K = len(SIZES)
N = sum(SIZES)


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    root = tmp_path_factory.mktemp("skewed")
    return make_collection(root, skewed_labels(SIZES, 7, seed=1, unlabelled=40), K)


def _sampler(shards, labels_dir, **options):
    options = {"streams": 2, "interleave": 3, "window": 300, "seed": 11, **options}
    return BalancedSampler(shards, labels_dir, cluster_sizes(shards, labels_dir, K), **options)


def _all_draws(sampler):
    return [d for w in range(sampler.streams) for d in sampler.iter_stream(w)]


def test_draws_are_uniform_over_clusters_of_skewed_sizes(skewed):
    sampler = _sampler(*skewed)
    draws = _all_draws(sampler)
    counts = np.bincount([d.label for d in draws], minlength=K)
    assert counts[-1] == 0 and -1 not in {d.label for d in draws}  # empty cluster, unlabelled
    nonempty = counts[:-1]
    # Proportional sampling would give 1500:1; uniform gives equal counts up to noise.
    assert chisquare(nonempty).pvalue > 0.01
    assert abs(len(draws) - N) < 4 * np.sqrt(N) / 2  # N draws in expectation, Bernoulli noise
    assert np.array_equal(counts, sampler.planned_cluster_draws())  # the plan is what streams


def test_reassign_scales_the_round_and_keeps_it_uniform(skewed):
    sampler = _sampler(*skewed, reassign=2.5)
    assert sampler.passes == 3
    draws = _all_draws(sampler)
    assert abs(len(draws) - 2.5 * N) < 4 * np.sqrt(3 * N) / 2
    assert chisquare(np.bincount([d.label for d in draws], minlength=K)[:-1]).pvalue > 0.01


def test_each_draw_carries_its_own_image_and_key(skewed):
    shards, _ = skewed
    by_index = {s.index: s for s in shards}
    for draw in _all_draws(_sampler(*skewed)):
        pixel = np.asarray(Image.open(io.BytesIO(draw.image)).convert("RGB"))[0, 0]
        assert np.abs(pixel - PALETTE[draw.label]).max() <= 8
        assert tuple(pixel) != WHITE
        assert draw.key == make_key(by_index[draw.shard].index, draw.row)


def test_same_seed_same_draws_and_other_seed_other_order(skewed):
    ids = lambda s: [(d.shard, d.row) for d in _all_draws(s)]
    assert ids(_sampler(*skewed)) == ids(_sampler(*skewed))
    assert ids(_sampler(*skewed)) != ids(_sampler(*skewed, seed=12))


@pytest.mark.parametrize("reassign", [1.0, 1.5])
def test_resuming_at_any_draw_gives_the_rest_of_the_same_stream(skewed, reassign):
    sampler = _sampler(*skewed, reassign=reassign)
    full = [(d.shard, d.row) for d in sampler.iter_stream(1)]
    window_edge, group_size = 300, int(sum(len(p.row) for _, p in sampler.plans(1)))
    for start in (1, window_edge - 1, window_edge, len(full) // 2, len(full) - 1, len(full)):
        assert [(d.shard, d.row) for d in sampler.iter_stream(1, start)] == full[start:], start
    assert group_size > window_edge  # the starts above cross window and group boundaries


def test_ranks_read_disjoint_shards_and_together_draw_the_same_round(skewed):
    shards, labels_dir = skewed
    single = _sampler(*skewed)
    ranks = [_sampler(*skewed, rank=q, world=2) for q in range(2)]
    touched = [{d.shard for d in _all_draws(r)} for r in ranks]
    assert not touched[0] & touched[1]
    assert touched[0] == {s.index for pos, s in enumerate(shards) if pos % 2 == 0}
    per_rank = sum(r.planned_cluster_draws() for r in ranks)
    assert np.array_equal(per_rank, single.planned_cluster_draws())  # draws keyed by shard


def test_window_bounds_memory_and_interleave_mixes_shards(tmp_path):
    # Four shards, each a single cluster (a class-sorted collection): windows still mix them.
    shards, labels_dir = make_collection(tmp_path, [np.full(100, c, np.int32) for c in range(4)], 4)
    sampler = BalancedSampler(shards, labels_dir, cluster_sizes(shards, labels_dir, 4),
                              streams=1, interleave=4, window=40, seed=0)
    labels = [d.label for d in sampler.iter_stream(0)]
    for start in range(0, len(labels) - 40, 40):
        assert len(set(labels[start:start + 40])) == 4


def test_labels_that_do_not_match_the_shard_are_refused(skewed, tmp_path):
    shards, labels_dir = skewed
    first = shards[0]
    wrong_keys = [f"other{i}" for i in range(first.n_samples)]
    bad = write_labels(tmp_path, [(first.name, wrong_keys, np.zeros(first.n_samples, np.int32))],
                       {"k": K, "round": 0})
    sampler = BalancedSampler([first], bad, np.ones(K, np.int64), seed=0)
    with pytest.raises(LabelsError, match="labels and shard disagree"):
        next(sampler.iter_stream(0))
    short = write_labels(tmp_path / "short", [(first.name, ["a"], np.zeros(1, np.int32))],
                         {"k": K, "round": 0})
    with pytest.raises(LabelsError, match="labels are from other shards"):
        cluster_sizes([first], short, K)
    keys = [make_key(first.index, r) for r in range(first.n_samples)]
    out_of_range = write_labels(tmp_path / "range", [(first.name, keys,
                                                      np.full(first.n_samples, K, np.int32))],
                                {"k": K, "round": 0})
    with pytest.raises(LabelsError, match="outside"):
        cluster_sizes([first], out_of_range, K)
