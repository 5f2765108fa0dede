"""`cluster` under torchrun: two ranks write the files one process writes, bit for bit, and a
rank killed mid-run leaves the round unfinished for a rerun that ends as if nothing happened."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from dcpipe.stages.cluster import ClusterSettings, cluster
from support.featurestores import blobs, make_store
from support.settings import pop_settings
from support.torchrun import TWO_RANKS, output_or_fail

RUNNER = Path(__file__).parents[2] / "support" / "cluster_runner.py"
# What may differ between two runs of the same clustering: how long they took, and how many
# processes ran it.
VOLATILE = ("timings", "seconds", "world_size")


def run_here(store, out, options: dict) -> dict:
    options = dict(options, progress=False)
    return cluster(store, out, pop_settings(ClusterSettings, options), **options)


def launch(runs: list[dict], launcher=TWO_RANKS, env=None) -> subprocess.Popen:
    """cluster_runner.py (by default under torchrun with two ranks) in a process group of its own."""
    payload = [{**run, "store": str(run["store"]), "out": str(run["out"]),
                "options": {**run["options"], "progress": False}} for run in runs]
    return subprocess.Popen([*launcher, str(RUNNER), json.dumps(payload)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    return output_or_fail(proc, timeout, "the 2-rank cluster run")


def files(out: Path) -> dict[str, bytes]:
    """Every file the stage wrote, by its path under out (the record apart)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "clusters.json"}


def steady(record: dict) -> dict:
    """A record without what may differ between two runs (faiss's per-iteration seconds too)."""
    kept = {key: value for key, value in record.items() if key not in VOLATILE}
    kept["iterations"] = [{k: v for k, v in it.items() if k != "elapsed"} for it in kept["iterations"]]
    return kept


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    x, blob = blobs(2000, 24, 12, seed=3, spread=1.5, scale=3.0)
    valid = (np.random.default_rng(4).random(2000) > 0.05).astype(np.uint8)
    # 2000 rows in 4 shards of 16-row chunks, read 48 rows at a time: 43 blocks, 21 and 22 a rank
    mixed = make_store(root / "blobs.zarr", x, [500, 300, 950, 250], 16, true_labels=blob, valid=valid)
    distinct = np.random.default_rng(5).standard_normal((40, 12))
    repeated = make_store(root / "dup.zarr", np.repeat(distinct, 5, axis=0), [90, 110], 8, dtype="float32")
    return {"blobs": mixed, "dup": repeated}


CASES = {
    # a sample smaller than the store: refine passes, sampled and streamed rows; two heads
    "kmeans": ("blobs", dict(k=30, heads=2, pca_dim=8, sample_size=700, refine_passes=2,
                             seed=3, round_index=2, chunk_rows=48)),
    # 40 places for 100 clusters: the empty-cluster passes split 60; no PCA, spherical
    "splits": ("dup", dict(k=100, pca_dim=0, seed=1, chunk_rows=24)),
    # PIC on rank 0, every other row labelled by its nearest sampled row on its own rank
    "pic": ("blobs", dict(method="pic", pca_dim=8, sample_size=600, seed=2, chunk_rows=48)),
}


def test_two_ranks_write_the_files_of_one_process_bit_for_bit(stores, tmp_path):
    runs = [{"store": stores[store], "out": tmp_path / "two" / name, "options": options}
            for name, (store, options) in CASES.items()]
    proc = launch(runs)
    alone = {name: run_here(stores[store], tmp_path / "one" / name, options)
             for name, (store, options) in CASES.items()}
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr[-3000:]
    returned = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len(returned) == 2 * len(CASES)  # every rank returns every run's record
    assert alone["splits"]["empty_before_fix"] >= 60 and alone["kmeans"]["refine_passes"] == 2
    for name in CASES:
        one, two = tmp_path / "one" / name, tmp_path / "two" / name
        written = files(one)
        assert {"pca.npz", "centroids.npy", "labels/index.json"} <= set(written)
        assert files(two) == written, name
        on_disk = json.loads((two / "clusters.json").read_text())
        assert on_disk["world_size"] == 2 and alone[name]["world_size"] == 1
        assert steady(on_disk) == steady(json.loads(json.dumps(alone[name]))), name
        assert sum(record == on_disk for record in returned) == 2, name


def test_a_rank_killed_mid_run_leaves_the_round_unfinished_and_the_rerun_ends_the_same(stores, tmp_path):
    options = dict(k=40, pca_dim=8, sample_size=300, refine_passes=10, seed=5, chunk_rows=16)
    run = {"store": stores["blobs"], "options": options}
    # the uninterrupted run: one process, one thread (the test's own threads would wait on
    # OpenMP for each of its ~1,400 tiny searches on a busy machine)
    reference = launch([{**run, "out": tmp_path / "reference"}], launcher=[sys.executable],
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = tmp_path / "killed"
    out.mkdir()
    (out / "clusters.json").write_text("{}")  # a finished round, being clustered again
    proc = launch([{**run, "out": out}])
    deadline = time.monotonic() + 120
    while (out / "clusters.json").exists():  # rank 0 removes it once every rank has joined
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.005)
    time.sleep(0.3)  # into the passes over the store
    rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True)
             if p.environ().get("RANK") == "1"]
    assert len(rank1) == 1
    rank1[0].send_signal(signal.SIGKILL)
    finish(proc)
    assert proc.returncode != 0  # torchrun stopped rank 0 and failed the run
    assert not (out / "clusters.json").exists(), "the run finished before its rank was killed"
    rerun = launch([{**run, "out": out}])
    for done in (rerun, reference):
        assert finish(done) and done.returncode == 0, done.stderr.read()[-3000:]
    assert json.loads((out / "clusters.json").read_text())["world_size"] == 2
    assert files(out) == files(tmp_path / "reference")
