"""`dcpipe cluster --round R` under torchrun: rank 0 alone holds the workspace lock, the ranks
extract and then cluster in one process group, rank 0 prints the record once, and the round
gets the labels one process gives it."""
import json
import shutil
from pathlib import Path

from support.cli import DCPIPE, dcpipe
from support.torchrun import TWO_RANKS, run_in_group
from support.workspaces import tiny_workspace


def label_files(ws: Path, r: int) -> dict[str, bytes]:
    folder = ws / "rounds" / f"{r:04d}" / "labels"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_cluster_round_under_torchrun_writes_the_one_process_labels_once(tmp_path):
    one = tiny_workspace(tmp_path / "one", per_shard=60)
    two = Path(shutil.copytree(one, tmp_path / "two"))
    alone = dcpipe(one, "cluster", "--round", "0", "--sample-size", "50", timeout=300)
    assert alone.returncode == 0, alone.stderr
    ranks = run_in_group([*TWO_RANKS, DCPIPE, "-w", str(two), "cluster", "--round", "0",
                          "--sample-size", "50"], 300, "the 2-rank cluster round")
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    summary = [line.split(", seconds")[0] for line in ranks.stdout.splitlines() if line.startswith("k ")]
    assert summary == [alone.stdout.splitlines()[-1].split(", seconds")[0]]  # rank 0 prints it
    assert label_files(two, 0) == label_files(one, 0)
    record = json.loads((two / "rounds" / "0000" / "clusters.json").read_text())
    assert record["world_size"] == 2 and record["refine_passes"] == 2
    assert "cluster" in json.loads((two / "rounds" / "0000" / "config.json").read_text())
