"""`dcpipe run` as cron uses it: missing steps only, one run at a time, shards joining later rounds."""

import hashlib
import json
import subprocess
import sys
import time

from support.cli import DCPIPE, dcpipe
from support.workspaces import TINY, tiny_workspace

from dcpipe.shards.manifest import MANIFEST, add_entry, load_manifest


def status(ws):
    out = dcpipe(ws, "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_run_does_only_what_is_missing_and_continues_later(tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    first = dcpipe(ws, "-q", "run", "--rounds", "1", umask=0o022)
    assert first.returncode == 0, first.stderr
    modes = {p.relative_to(ws): oct(p.stat().st_mode & 0o777) for p in (ws / "rounds").rglob("*")
             if p.is_file()}
    assert {"rounds/0000/model.pt", "rounds/0000/clusters.json",
            "rounds/0000/features.zarr/zarr.json"} <= set(map(str, modes))
    assert set(modes.values()) == {"0o644"}, modes  # another account (an analyst) reads them
    [r0] = status(ws)["rounds"]
    assert r0["steps"] == {"extract": True, "cluster": True, "train": True}
    model_mtime = (ws / "rounds" / "0000" / "model.pt").stat().st_mtime_ns
    second = dcpipe(ws, "run", "--rounds", "2")
    assert second.returncode == 0, second.stderr
    assert "round 0" not in second.stdout.split("step(s) done")[0]
    assert (ws / "rounds" / "0000" / "model.pt").stat().st_mtime_ns == model_mtime
    rounds = status(ws)["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["cluster"]["nmi_prev"] is not None and rounds[1]["cluster"]["nmi_true"] is not None
    assert rounds[1]["train"]["steps"] > 0
    text = dcpipe(ws, "status").stdout.splitlines()
    row = text[text.index(next(line for line in text if line.startswith("round "))) + 2].split()
    c, t = rounds[1]["cluster"], rounds[1]["train"]
    assert row == ["1", "done", "done", "done", str(c["k"]), f"{c['nmi_true']:.3f}", f"{c['nmi_prev']:.3f}",
                   f"{c['acc_true']:.3f}", f"{t['final_loss']:.3f}", f"{c['seconds']:.1f}", f"{t['seconds']:.1f}",
                   "deepcluster"]
    again = dcpipe(ws, "run", "--rounds", "2")
    assert again.returncode == 0 and "already complete" in again.stdout
    for command in (["run", "--rounds", "2"], ["status"]):  # cron's no-op: no heavy imports
        assert _heavy_imports(ws, command) == []


NO_OP = """
import sys
from dcpipe.pipeline.cli import main
try:
    main(["-w", sys.argv[1], "-q", *sys.argv[2:]], prog_name="dcpipe")
finally:
    print(sorted(m for m in ("torch", "zarr", "faiss", "PIL") if m in sys.modules))
"""


def _heavy_imports(ws, command):
    out = subprocess.run([sys.executable, "-c", NO_OP, str(ws), *command], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1].replace("'", '"'))


def test_a_second_run_while_one_works_exits_75_at_once(tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    first = subprocess.Popen([DCPIPE, "-q", "-w", str(ws), "run", "--rounds", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (ws / ".lock").exists() or not (ws / ".lock").read_text().strip():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        start = time.monotonic()
        second = dcpipe(ws, "run", "--rounds", "1")
        assert second.returncode == 75 and "busy" in second.stderr
        assert time.monotonic() - start < 20
    finally:
        assert first.wait(timeout=300) == 0


def test_shards_added_between_rounds_join_the_next_round(tmp_path):
    ws = tiny_workspace(tmp_path / "ws", n_shards=3)
    # hold back shard 2 as if cron's `dcpipe shard` appended it after round 0 began
    late = load_manifest(ws / "shards")["shards"][-1]
    lines = (ws / "shards" / MANIFEST).read_text().splitlines(keepends=True)
    (ws / "shards" / MANIFEST).write_text("".join(lines[:-1]))
    assert dcpipe(ws, "-q", "run", "--rounds", "1").returncode == 0
    add_entry(ws / "shards", late)
    assert dcpipe(ws, "-q", "run", "--rounds", "2").returncode == 0
    used = [json.loads((ws / "rounds" / f"000{r}" / "shards.json").read_text()) for r in (0, 1)]
    assert used == [["000000", "000001"], ["000000", "000001", "000002"]]
    rounds = status(ws)["rounds"]
    assert [r["cluster"]["n_samples"] for r in rounds] == [80, 120]


def test_a_deepcluster_v2_workspace_runs_its_rounds_and_says_so(tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    v2 = TINY.replace("pca_dim = 16\n", "")  # v2 clusters its projections unwhitened
    (ws / "dcpipe.toml").write_text(v2.replace('method = "deepcluster"\n',
                                               'method = "deepcluster-v2"\nsmall_crops = 2\n'))
    out = dcpipe(ws, "-q", "run", "--rounds", "2")
    assert out.returncode == 0, out.stderr
    rounds = status(ws)["rounds"]
    assert [r["train"]["method"] for r in rounds] == ["deepcluster-v2"] * 2
    config = json.loads((ws / "rounds" / "0001" / "config.json").read_text())["train"]
    assert config["model"]["projection"] == 128 and config["train"]["total_rounds"] == 2
    assert (ws / "rounds" / "0001" / "labels.2" / "index.json").exists()
    assert "deepcluster-v2" in dcpipe(ws, "status").stdout


def _store_attrs(path):
    return json.loads((path / "zarr.json").read_text())["attributes"]


def test_bank_rounds_take_their_features_from_the_previous_training_until_the_collection_grows(
        tmp_path):
    ws = tiny_workspace(tmp_path / "ws", n_shards=3)
    late = load_manifest(ws / "shards")["shards"][-1]  # held back, appended after round 1
    lines = (ws / "shards" / MANIFEST).read_text().splitlines(keepends=True)
    (ws / "shards" / MANIFEST).write_text("".join(lines[:-1]))
    v2 = TINY.replace("pca_dim = 16\n", "").replace(
        'method = "deepcluster"\n', 'method = "deepcluster-v2"\nsmall_crops = 2\nfeatures = "bank"\n')
    (ws / "dcpipe.toml").write_text(v2)
    out = dcpipe(ws, "-q", "run", "--rounds", "2")
    assert out.returncode == 0, out.stderr
    r0, r1, r2 = (ws / "rounds" / f"000{r}" for r in range(3))
    adopted = _store_attrs(r1 / "features.zarr")
    assert adopted["complete"] and adopted["model"]["source"] == "bank"  # not extracted
    assert adopted["model"]["round"] == 0 and adopted["model"]["sha256"] == \
        hashlib.sha256((r0 / "model.pt").read_bytes()).hexdigest()
    assert not (r0 / "bank.zarr").exists() and (r1 / "bank.zarr").is_dir()  # moved; round 2's
    rounds = status(ws)["rounds"]
    assert [r["steps"] for r in rounds] == [dict.fromkeys(("extract", "cluster", "train"), True)] * 2
    assert rounds[1]["cluster"]["n_samples"] == 80 and rounds[1]["cluster"]["nmi_prev"] is not None
    assert dcpipe(ws, "-q", "verify").returncode == 0
    add_entry(ws / "shards", late)  # round 2 has a shard round 1's training never saw
    (r1 / "bank.zarr.discarded").mkdir()  # as a kill mid-deletion leaves it
    assert dcpipe(ws, "-q", "run", "--rounds", "3").returncode == 0
    assert _store_attrs(r2 / "features.zarr")["model"]["source"] == str(r1 / "model.pt")
    assert not [p.name for p in r1.iterdir() if p.name.startswith("bank")]  # never to be read
    assert status(ws)["rounds"][2]["cluster"]["n_samples"] == 120


def test_reclustering_a_trained_round_needs_force_and_discards_its_training(tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    assert dcpipe(ws, "-q", "run", "--rounds", "2").returncode == 0
    r1 = ws / "rounds" / "0001"
    labels_before = (r1 / "labels" / "index.json").read_bytes()
    refused = dcpipe(ws, "-q", "cluster", "--round", "1")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert status(ws)["rounds"][1]["steps"] == {"extract": True, "cluster": True, "train": True}
    earlier = dcpipe(ws, "-q", "cluster", "--round", "0", "--force")
    assert earlier.returncode == 2 and "rounds [1] were built on round 0's model" in earlier.stderr
    assert (ws / "rounds" / "0000" / "model.pt").exists()
    redone = dcpipe(ws, "-q", "cluster", "--round", "1", "--force", "--k", "3")
    assert redone.returncode == 0, redone.stderr
    assert (r1 / "labels" / "index.json").read_bytes() != labels_before
    assert status(ws)["rounds"][1]["steps"] == {"extract": True, "cluster": True, "train": False}
    assert not any((r1 / name).exists() for name in ("model.pt", "model.json", "train.json", "ckpt"))
    assert dcpipe(ws, "-q", "run", "--rounds", "2").returncode == 0
    assert json.loads((r1 / "train.json").read_text())["k"] == 3


def test_a_refused_step_does_not_fix_a_future_rounds_shards(tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    for step in ("extract", "cluster", "train"):
        out = dcpipe(ws, "-q", step, "--round", "3")
        assert out.returncode == 2 and "round 3" in out.stderr
    assert not (ws / "rounds" / "0003").exists()
    assert status(ws)["rounds"] == []
