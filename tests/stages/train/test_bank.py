"""DeepCluster-v2's memory bank (`[train] features = "bank"`): the next round's feature store
filled by the round's training, in the extract stage's format, resumable and under torchrun."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dcpipe.errors import SettingsError
from dcpipe.stages.common.featurestore import ROW_ARRAYS, open_store, verify_store
from dcpipe.stages.common.labels import LabelsError, load_labels, write_labels
from dcpipe.stages.common.models import build_model, normalize_floats
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.extract import extract
from dcpipe.stages.extract.settings import ExtractSettings
from dcpipe.stages.train import TrainSettings
from dcpipe.stages.train.balanced_sampler import BalancedSampler, cluster_sizes
from dcpipe.stages.train.bank import BankPart, BankSpec, assemble
from dcpipe.stages.train.batches import MergedBatches, open_streams
from dcpipe.stages.train.multicrop import MultiCrop
from dcpipe.stages.train.objectives import PrototypeMatching
from dcpipe.stages.train.stage import train, train_step
from support.labelled_shards import label_of_pixels, make_collection
from support.settings import pop_settings
from support.train_kill import kill_at_first_checkpoint, launch
from support.torchrun import TWO_RANKS, output_or_fail

torch.set_num_threads(1)
K, DIM, CHUNK_ROWS = 4, 16, 32
SPEC = {"sobel": False, "width": 4, "projection": DIM, "input_size": 32}
OPTIONS = {**SPEC, "method": "deepcluster-v2", "features": "bank", "batch_size": 16,
           "small_crops": 2, "workers": 1, "lr": 0.1, "lr_schedule": "cosine",
           "warmup_rounds": 0.5, "total_rounds": 3, "weight_decay": 1e-6, "checkpoint_every": 3,
           "loss_every": 2, "seed": 1, "round_index": 1, "progress": False}


def _round(root: Path, labels_per_shard: list[np.ndarray]):
    """Shards with planted labels, the round's feature store (the extract stage's, of the
    random init: rows in several chunks per shard, padding between shards) and one head of
    unit centroids."""
    shards, labels_dir = make_collection(root, labels_per_shard, K, image_size=16)
    store = root / "features.zarr"
    extract(shards, store, ModelSpec(**SPEC), ExtractSettings(workers=0, chunk_rows=CHUNK_ROWS),
            seed=1, progress=False)
    c = np.random.default_rng(0).standard_normal((K, DIM)).astype(np.float32)
    np.save(root / "centroids.npy", c / np.linalg.norm(c, axis=1, keepdims=True))
    return shards, labels_dir, store, root / "centroids.npy"


@pytest.fixture(scope="module")
def bank_round(tmp_path_factory):
    rng = np.random.default_rng(0)
    return _round(tmp_path_factory.mktemp("bank"),
                  [rng.integers(0, K, n).astype(np.int32) for n in (60, 50, 40)])


def run_bank(round_files, out, **overrides):
    shards, labels_dir, store, centroids = round_files
    options = {**OPTIONS, **overrides}
    return train(shards, labels_dir, out, pop_settings(ModelSpec, options),
                 pop_settings(TrainSettings, options), centroids=[centroids],
                 bank=BankSpec(store, "float16"), **options)


def _arrays(path: Path) -> dict:
    store = open_store(path)
    found = {name: store.read(name) for name in ("features", *ROW_ARRAYS, "shard_offset",
                                                 "shard_count")}
    found["keys"] = [store.keys(s) for s in range(store.n_shards)]
    found["done"] = [store.done_record(s) for s in range(store.n_shards)]
    return found


def test_the_bank_is_a_complete_store_with_the_rounds_layout_and_unit_rows(bank_round, tmp_path):
    record = run_bank(bank_round, tmp_path)
    bank, layout = open_store(tmp_path / "bank.zarr"), open_store(bank_round[2])
    assert bank.complete and verify_store(bank.path) == []
    for key in ("format", "n_rows", "dim", "dtype", "chunk_rows", "shard_names", "class_names"):
        assert bank.attrs[key] == layout.attrs[key], key
    assert bank.attrs["model"]["source"] == "bank" and bank.attrs["model"]["round"] == 1
    mine, extracted = _arrays(bank.path), _arrays(layout.path)
    for name in (*ROW_ARRAYS, "shard_offset", "shard_count", "keys", "done"):
        assert np.array_equal(mine[name], extracted[name]) if name not in ("keys", "done") \
            else mine[name] == extracted[name], name
    rows, valid = mine["features"].astype(np.float32), mine["valid"].astype(bool)
    assert mine["features"].dtype == np.float16 and valid.sum() == 150
    assert np.allclose(np.linalg.norm(rows[valid], axis=1), 1, atol=2e-3)
    assert not rows[~valid].any()  # padding stays zero
    assert len({r.tobytes() for r in rows[valid]}) == 150  # a row of its own for every sample
    assert record["timings"]["bank_s"] > 0
    assert not (tmp_path / "ckpt" / "bank.zarr").exists()  # built there, then moved


def test_a_bank_row_is_the_normalised_mean_of_the_two_full_crops_projections():
    net = build_model(ModelSpec(**SPEC), seed=0).eval()  # eval: per-sample, comparable alone
    net.set_prototypes([torch.nn.functional.normalize(torch.randn(K, DIM), dim=1)], 0.1)
    crops = MultiCrop(32, 2, big_min=0.14, colour_strength=1.0)
    packed = torch.randn(5, crops.sample_shape[0])
    _, rows = train_step(net, [], packed, torch.zeros(5, dtype=torch.int64), 1.0, parts=2,
                         objective=PrototypeMatching(crops.unpack))
    first, second = (net.embed(c) for c in crops.unpack(packed)[:2])
    expected = torch.nn.functional.normalize(first + second, dim=1)
    assert rows.shape == (5, DIM) and torch.allclose(rows, expected, atol=1e-5)


def test_batches_carry_each_samples_shard_and_row(bank_round):
    shards, labels_dir = bank_round[:2]
    sampler = BalancedSampler(shards, labels_dir, cluster_sizes(shards, labels_dir, K),
                              balanced=False, streams=2)
    crops = MultiCrop(16, 0, big_min=0.14, colour_strength=1.0)
    streams = open_streams(sampler, 8, crops, workers=0)
    batches = MergedBatches(sampler.stream_lengths(), 8, streams, (2 * 3 * 16 * 16,))
    images, labels, ids = batches.take(150)
    planted = {s.index: load_labels(labels_dir, s.name)[1] for s in shards}
    assert sorted(map(tuple, ids.tolist())) == [(s.index, r) for s in shards
                                                for r in range(s.n_samples)]
    first_crops = images[:, :3 * 16 * 16].reshape(-1, 3, 16, 16).float() / 255
    for (shard, row), label, image in zip(ids.tolist(), labels.tolist(),
                                          normalize_floats(first_crops)):
        assert planted[shard][row] == label == label_of_pixels(image)


def test_recorded_rows_land_on_their_samples_store_rows(bank_round, tmp_path):
    """Each rank's part holds its shards' rows; assembly puts row r of shard s at
    shard_offset[s] + r, bit for bit, whatever rank recorded it."""
    shards, _, layout_path, _ = bank_round
    world, layout = 2, open_store(bank_round[2])
    expected = {}
    for rank in range(world):
        part = BankPart(tmp_path, shards, rank, world, DIM, "float16", fresh=True)
        for pos in range(rank, len(shards), world):
            n = shards[pos].n_samples
            rows = torch.nn.functional.normalize(torch.randn(n, DIM), dim=1).half()
            ids = torch.tensor([[shards[pos].index, r] for r in range(n)])
            order = torch.randperm(n)  # recorded in training's order, not the store's
            part.record(ids[order], rows[order])
            expected[pos] = rows.numpy()
        part.flush()
    info = {**build_model(ModelSpec(**SPEC)).config, "source": "bank"}
    bank = open_store(assemble(BankSpec(layout_path, "float16"), tmp_path, world, info))
    for pos, rows in expected.items():
        start, stop = layout.shard_rows(pos)
        assert np.array_equal(bank.read("features", start, stop), rows)


def test_a_labelled_row_training_never_saw_stops_the_bank(tmp_path):
    """A sample the round's store holds but training never drew (here: no label) must not
    become a zero row of the next round: no bank is written."""
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, K, n).astype(np.int32) for n in (30, 20)]
    shards, labels_dir, store, centroids = _round(tmp_path / "r", labels)
    keys, _ = load_labels(labels_dir, shards[1].name)
    relabelled = labels[1].copy()
    relabelled[7] = -1
    published = [(shards[0].name, load_labels(labels_dir, shards[0].name)[0], labels[0]),
                 (shards[1].name, keys, relabelled)]
    holey = write_labels(tmp_path / "holey", published, {"k": K, "round": 1})
    with pytest.raises(LabelsError, match=f"1 samples of shard {shards[1].name}.*row 7"):
        run_bank((shards, holey, store, centroids), tmp_path / "out")
    assert not (tmp_path / "out" / "bank.zarr").exists()
    assert not (tmp_path / "out" / "train.json").exists()


def test_sigkill_mid_round_then_resume_gives_the_same_bank_bytes(bank_round, tmp_path):
    shards, labels_dir, store, centroids = bank_round
    overrides = {"batch_size": 8, "checkpoint_every": 2}  # ~19 steps
    reference = run_bank(bank_round, tmp_path / "uninterrupted", **overrides)
    out = tmp_path / "killed"
    proc = launch([sys.executable], shards[0].path.parent, labels_dir, out,
                  {**OPTIONS, **overrides, "centroids": [str(centroids)],
                   "bank": {"layout": str(store), "dtype": "float16"}})
    killed_at = kill_at_first_checkpoint(proc, out)
    assert 0 < killed_at < reference["steps"]
    assert (out / "ckpt" / "bank.0.npy").exists() and not (out / "bank.zarr").exists()
    record = run_bank(bank_round, out, **overrides)
    assert record["resumed_from_step"] >= killed_at
    resumed, uninterrupted = _arrays(out / "bank.zarr"), _arrays(tmp_path / "uninterrupted" / "bank.zarr")
    assert resumed["features"].tobytes() == uninterrupted["features"].tobytes()
    assert resumed["keys"] == uninterrupted["keys"]


def test_two_rank_torchrun_round_fills_one_bank(bank_round, tmp_path):
    shards, labels_dir, store, centroids = bank_round
    proc = launch(TWO_RANKS, shards[0].path.parent, labels_dir, tmp_path,
                  {**OPTIONS, "centroids": [str(centroids)],
                   "bank": {"layout": str(store), "dtype": "float16"}})
    _, stderr = output_or_fail(proc, 180, "the 2-rank bank round")
    assert proc.returncode == 0, stderr[-3000:]
    assert json.loads((tmp_path / "train.json").read_text())["world_size"] == 2
    bank = _arrays(tmp_path / "bank.zarr")
    assert np.array_equal(bank["valid"], _arrays(store)["valid"])  # every sample, both ranks'
    valid = bank["valid"].astype(bool)
    assert np.allclose(np.linalg.norm(bank["features"][valid].astype(np.float32), axis=1), 1,
                       atol=2e-3)
    assert {p.name for p in (tmp_path / "ckpt").glob("bank.*.npy")} == {"bank.0.npy", "bank.1.npy"}


@pytest.mark.parametrize("change, message", [
    ({"method": "deepcluster"}, "deepcluster-v2"), ({"reassign": 1.5}, "reassign = 2"),
    ({"features": "memory"}, "features must be one of")])
def test_bank_settings_that_cannot_work_are_refused(change, message):
    with pytest.raises(SettingsError, match=message):
        TrainSettings(**{"method": "deepcluster-v2", "features": "bank", **change})
