"""What the report reads: cluster sizes, sample images per cluster, neighbours, filters."""

import numpy as np
import pytest
import torch

from dcpipe.pipeline.report import data as reportdata
from dcpipe.pipeline.workspace import Workspace
from dcpipe.stages.common.models import build_model
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.shards.manifest import add_entry
from dcpipe.shards.naming import make_key
from dcpipe.shards.writer import ShardWriter
from dcpipe.stages.common.labels import write_labels
from support.labelled_shards import PALETTE, colour, jpeg, make_collection, skewed_labels
from support.sample_shards import CLASSES

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Shards whose images are flat colours encoding their cluster, with a label index."""
    root = tmp_path_factory.mktemp("planted")
    labels = skewed_labels([30, 12, 5, 1, 0, 2], n_shards=3, seed=1, unlabelled=4)
    _, labels_dir = make_collection(root, labels, k=6)
    return root, labels_dir, np.concatenate(labels)


def test_cluster_sizes_count_every_labelled_sample(planted):
    _, labels_dir, labels = planted
    sizes = reportdata.cluster_sizes(labels_dir)
    assert sizes.tolist() == [30, 12, 5, 1, 0, 2]
    assert sizes.sum() == (labels >= 0).sum()


def test_shown_clusters_hold_images_of_their_own_cluster(planted):
    root, labels_dir, _ = planted
    sizes = reportdata.cluster_sizes(labels_dir)
    found = reportdata.sample_clusters(root / "shards", labels_dir, sizes, clusters=4,
                                       per_cluster=3, seed=0)
    # the two largest and the two smallest non-empty clusters, largest first
    assert [ex.cluster for ex in found.shown] == [0, 1, 5, 3]
    assert all(ex.size == sizes[ex.cluster] for ex in found.shown)
    for ex in found.shown:
        assert len(ex.examples) == min(3, ex.size)
        for example in ex.examples:
            colour = example.image.reshape(-1, 3).mean(axis=0)
            assert np.argmin(((PALETTE - colour) ** 2).sum(axis=1)) == ex.cluster


def class_by_class(root, per_class=8, strays=2):
    """Shards written class by class, as a folder source is: shard s holds class s only.
    Cluster 0 holds `per_class` images of every class, cluster 1 `strays` of each."""
    shards_dir, published = root / "shards", []
    for s, name in enumerate(CLASSES):
        writer = ShardWriter(shards_dir, s)
        keys = [make_key(s, row) for row in range(per_class + strays)]
        for key in keys:
            writer.add(key, jpeg(colour(s), 8), {"label": name})
        add_entry(shards_dir, writer.commit({"rows": len(keys)}))
        published.append((writer.name, keys, np.array([0] * per_class + [1] * strays, np.int32)))
    return shards_dir, write_labels(root, published, {"k": 2, "round": 0})


def test_a_cluster_is_shown_by_members_drawn_across_it_not_its_first_in_shard_order(tmp_path):
    shards_dir, labels_dir = class_by_class(tmp_path)
    sizes = reportdata.cluster_sizes(labels_dir)
    shown_classes = set()
    for seed in range(3):
        found = reportdata.sample_clusters(shards_dir, labels_dir, sizes, clusters=2,
                                           per_cluster=6, seed=seed)
        big = found.shown[0]
        assert big.cluster == 0 and len(big.examples) == 6
        captions = [e.caption for e in big.examples]
        assert len(set(captions)) > 1  # shard order would show 6 of the first class
        for e in big.examples:  # each caption is its own image's class (planted colour)
            colour = e.image.reshape(-1, 3).mean(axis=0)
            assert CLASSES[np.argmin(((PALETTE - colour) ** 2).sum(axis=1))] == e.caption
        shown_classes |= set(captions)
    assert shown_classes == set(CLASSES)


def test_the_composition_matrix_counts_each_cluster_and_class(tmp_path):
    shards_dir, labels_dir = class_by_class(tmp_path, per_class=8, strays=2)
    found = reportdata.sample_clusters(shards_dir, labels_dir, reportdata.cluster_sizes(labels_dir),
                                       clusters=2, per_cluster=2, seed=0)
    assert found.classes == sorted(CLASSES)
    assert found.composition.tolist() == [[8, 8, 8], [2, 2, 2]]
    assert (found.shards_read, found.shards_total) == (3, 3)


def test_chance_baselines_of_a_perfect_and_a_mixed_clustering():
    perfect = np.diag([30, 30, 30])
    scores = reportdata.chance_baselines(perfect, seed=0)
    assert scores["purity"] == 1.0 and scores["nmi"] == pytest.approx(1.0)
    assert scores["random_purity"] < 0.6 and scores["random_nmi"] < 0.1
    assert scores["majority_share"] == pytest.approx(1 / 3)
    mixed = np.array([[8, 8, 8], [2, 2, 2]])
    assert reportdata.chance_baselines(mixed, seed=0)["purity"] == pytest.approx(1 / 3)


def test_a_reservoir_keeps_each_item_with_equal_chance():
    kept = np.zeros(50)
    for seed in range(1000):
        reservoir = reportdata.Reservoir(5, np.random.default_rng(seed))
        for item in range(50):
            reservoir.offer(item)
        assert len(reservoir.items) == 5 and len(set(reservoir.items)) == 5
        kept[reservoir.items] += 1
    # each item expected 100 times (5/50 of 1000): the first and the last alike
    assert kept.min() > 60 and kept.max() < 140
    assert abs(kept[:25].sum() - kept[25:].sum()) < 300


def test_largest_and_smallest_clusters_among_those_read():
    sizes = np.array([30, 12, 5, 1, 0, 2, 9])
    available = np.array([3, 1, 1, 1, 0, 1, 0])
    assert reportdata.largest_and_smallest(sizes, available, 4) == [0, 1, 5, 3]
    assert reportdata.largest_and_smallest(sizes, available, 3) == [0, 1, 3]
    assert reportdata.largest_and_smallest(sizes, available, 9) == [0, 1, 2, 5, 3]


def test_only_a_bounded_random_set_of_shards_is_read(tmp_path):
    labels = [np.array([s % 3, (s + 1) % 3] * 3, dtype=np.int32) for s in range(6)]
    _, labels_dir = make_collection(tmp_path, labels, k=3)
    names = [f"{i:06d}" for i in range(6)]
    read = reportdata.some_shards(names, 2, seed=4)
    assert len(read) == 2 and read == sorted(read)
    for name in set(names) - set(read):  # never opened: corrupting them changes nothing
        (tmp_path / "shards" / f"{name}.tar").write_bytes(b"garbage")
    sizes = reportdata.cluster_sizes(labels_dir)
    found = reportdata.sample_clusters(tmp_path / "shards", labels_dir, sizes, clusters=3,
                                       per_cluster=2, seed=4, max_shards=2)
    assert sum(len(ex.examples) for ex in found.shown) >= 4
    assert found.composition.sum() == 12 and (found.shards_read, found.shards_total) == (2, 6)
    models = {"m": build_model(ModelSpec("small", input_size=32, width=8), seed=0).eval()}
    pool = reportdata.nearest_neighbours(tmp_path / "shards", models, pool=50, queries=2, k=3,
                                         seed=4, max_shards=2)
    assert len(pool.thumbs) == 12  # the two shards' images, no more


def test_neighbours_leave_the_query_out_and_rank_by_cosine():
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    assert reportdata._neighbours(features, [0, 2], k=2).tolist() == [[1, 3], [3, 1]]


def test_nearest_neighbours_of_two_models_on_a_subset(planted):
    root, _, _ = planted
    models = {"a": build_model(ModelSpec("small", input_size=32, width=8), seed=0).eval(),
              "b": build_model(ModelSpec("small", input_size=32, width=8), seed=1).eval()}
    found = reportdata.nearest_neighbours(root / "shards", models, pool=20, queries=3, k=4,
                                          seed=0)
    assert found.thumbs.shape == (20, 32, 32, 3) and found.thumbs.dtype == np.uint8
    assert len(found.queries) == 3 and set(found.by_model) == {"a", "b"}
    for neighbours in found.by_model.values():
        assert neighbours.shape == (3, 4)
        assert not any(q in row for q, row in zip(found.queries, neighbours.tolist()))


def test_sobel_filters_are_shown_as_the_grey_filter_they_amount_to():
    model = build_model(ModelSpec("small", input_size=32, width=8), seed=0).eval()
    filters = reportdata.first_layer_filters(model)
    assert filters.shape == (8, 5, 5, 1) and filters.min() == 0 and filters.max() == 1
    # the composed kernel applied to a grey image equals Sobel then conv1 (away from borders)
    conv = model.features[0][0]
    sobel = model.sobel[1].weight.detach().double()
    composed = reportdata._compose_with_sobel(conv.weight.detach().double(), sobel)
    grey = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        through_model = torch.nn.functional.conv2d(model.sobel.double()(grey.repeat(1, 3, 1, 1)),
                                                   conv.weight.double())
    direct = torch.nn.functional.conv2d(grey, composed)
    assert torch.allclose(through_model[..., 2:-2, 2:-2], direct[..., 1:-1, 1:-1], atol=1e-6)


def test_rgb_filters_keep_their_colour():
    model = build_model(ModelSpec("small", input_size=32, width=8, sobel=False), seed=0)
    assert reportdata.first_layer_filters(model).shape == (8, 3, 3, 3)


def test_rounds_are_read_with_whatever_records_they_have(tmp_path):
    (tmp_path / "rounds" / "0000").mkdir(parents=True)
    (tmp_path / "rounds" / "0001").mkdir()
    (tmp_path / "rounds" / "0000" / "clusters.json").write_text('{"k": 3}')
    (tmp_path / "rounds" / "0001" / "eval.json").write_text("{broken")
    records = reportdata.read_rounds(Workspace(tmp_path))
    assert [r.round for r in records] == [0, 1]
    assert records[0].clusters == {"k": 3} and records[1].eval is None
    assert not records[0].has_labels and records[0].model_path is None
    assert [r.round for r in reportdata.read_rounds(Workspace(tmp_path), rounds=[1])] == [1]
    assert reportdata.read_rounds(Workspace(tmp_path / "nothing")) == []
