"""`dcpipe run` on two torchrun "nodes" (one process each, static rendezvous on 127.0.0.1):
every step on both ranks, rank 0's workspace writes made once, the lock held for both."""

import os
import shutil
from pathlib import Path

import numpy as np
from support.cli import dcpipe
from support.torchrun import dcpipe_on_nodes
from support.workspaces import tiny_workspace

from dcpipe.pipeline.lock import workspace_lock

# Written by rank 0 alone: the workspace's records and the stages' single-copy outputs.
RANK_ZERO_FILES = ("config.json", "shards.json", "clusters.json", "centroids.npy", "pca.npz",
                   "index.json", "model.pt", "model.json", "train.json")


def _labels(round_dir: Path) -> dict:
    return {p.name: np.load(p) for p in sorted((round_dir / "labels").glob("*.npy"))}


def _renamed(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_two_nodes_run_every_step_and_agree_with_one_process(tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    alone = tmp_path / "alone"
    shutil.copytree(ws, alone)
    single = dcpipe(alone, "-q", "run", "--rounds", "1", env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr

    nodes = dcpipe_on_nodes(ws, "-q", "run", "--rounds", "2", renames_log=tmp_path / "renames")
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-3000:] + nodes[1].stderr[-3000:]
    for r in (0, 1):
        assert (ws / "rounds" / f"{r:04d}" / "train.json").exists()
    # extraction was split: each rank committed shards of the round's store
    for rank in (0, 1):
        assert any("/features.zarr/done/" in p for p in _renamed(tmp_path / f"renames.{rank}"))
    by_rank1 = [p for p in _renamed(tmp_path / "renames.1") if p.startswith(str(ws))]
    assert not [p for p in by_rank1 if os.path.basename(p) in RANK_ZERO_FILES], by_rank1
    by_rank0 = [os.path.basename(p) for p in _renamed(tmp_path / "renames.0")]
    assert by_rank0.count("shards.json") == 2  # once per round
    # round 0 is deterministic (seeded init, same features, same k-means): as one process
    here, there = _labels(ws / "rounds" / "0000"), _labels(alone / "rounds" / "0000")
    assert here.keys() == there.keys() and len(here) == 2
    assert all(np.array_equal(here[name], there[name]) for name in here)
    assert np.array_equal(np.load(ws / "rounds/0000/centroids.npy"),
                          np.load(alone / "rounds/0000/centroids.npy"))


def test_a_busy_workspace_refuses_every_node_before_any_write(tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    with workspace_lock(ws / ".lock"):
        nodes = dcpipe_on_nodes(ws, "-q", "run", "--rounds", "1", timeout=60)
    assert all(n.returncode != 0 for n in nodes)
    assert all("is busy" in n.stderr for n in nodes), [n.stderr[-2000:] for n in nodes]
    assert not (ws / "rounds").exists()
