"""Seconds per DeepCluster-v2 round with the next round's features from the memory bank that
training fills (`[train] features = "bank"`) against an extract pass (`"extract"`).

Two workspaces over the same shards (sharded once, hard-linked), the same config but for that
setting; their rounds alternate (round r of one, then round r of the other) so that both see the
same machine load. Each step is timed on its own: extract (for "bank", from round 1 on, the
adoption of the previous round's bank: a rename), cluster, train (for "bank", including the
bank's assembly, shown apart). Own-cluster NMI against the true labels is shown for reference.

    python benchmarks/bench_bank.py --per-class 500 --rounds 3      # 5,000 CIFAR-10 images

The quality per CPU-hour is benchmarks/cifar_quality.py's to decide (docs/train.md).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

from dcpipe.pipeline import rounds
from dcpipe.pipeline.workspace import Workspace
from dcpipe.shards.atomic import read_json

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10" / "train"
DCPIPE = str(Path(sys.executable).parent / "dcpipe")
FEATURES = ("extract", "bank")


def link_subset(cifar: Path, root: Path, per_class: int) -> Path:
    for class_dir in sorted(p for p in cifar.iterdir() if p.is_dir()):
        target = root / class_dir.name
        target.mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            (target / f.name).symlink_to(f)
    return root


def make_workspaces(work: Path, images: Path, n_rounds: int) -> dict[str, Workspace]:
    spaces = {name: Workspace(work / name) for name in FEATURES}
    for name, ws in spaces.items():
        ws.root.mkdir(parents=True)
        ws.config_path.write_text(tomli_w.dumps({"train": {
            "method": "deepcluster-v2", "features": name, "total_rounds": n_rounds}}))
    first = spaces[FEATURES[0]]
    subprocess.run([DCPIPE, "-q", "-w", str(first.root), "shard", "--src", str(images)], check=True)
    for ws in list(spaces.values())[1:]:
        subprocess.run(["cp", "-al", str(first.shards_dir), str(ws.shards_dir)], check=True)
    return spaces


def timed_round(ws: Workspace, r: int) -> dict:
    config = ws.config()
    times = {}
    for step, run in (("extract", rounds.extract_round), ("cluster", rounds.cluster_round),
                      ("train", rounds.train_round)):
        start = time.perf_counter()
        run(ws, r, config, False)
        times[step] = time.perf_counter() - start
    train = read_json(ws.round(r).train_record)
    times["bank"] = train["timings"].get("bank_s", 0.0)
    times["wait"] = train["timings"]["data_wait_s"]
    times["startup"] = train["timings"]["startup_s"]
    times["nmi"] = read_json(ws.round(r).clusters_record)["nmi_true"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=500, help="CIFAR-10 images per class")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=Path, default=CIFAR, help="an ImageNet-style folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = link_subset(args.images, Path(tmp) / "images", args.per_class)
        spaces = make_workspaces(Path(tmp), images, args.rounds)
        results = {name: [] for name in FEATURES}
        for r in range(args.rounds):
            for name, ws in spaces.items():
                results[name].append(timed_round(ws, r))
                print(name, r, {k: round(v, 3) for k, v in results[name][-1].items()}, flush=True)
    print_table(results, args, os.cpu_count())


def print_table(results: dict, args, cpus: int) -> None:
    n = 10 * args.per_class
    print(f"\n{n} images, {args.rounds} rounds of deepcluster-v2 (defaults), {cpus} cores; seconds")
    print("| round | features | extract | cluster | train (bank assembly) | round | bank / extract "
          "| own NMI |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in range(args.rounds):
        base = sum(results["extract"][r][s] for s in ("extract", "cluster", "train"))
        for name in FEATURES:
            t = results[name][r]
            total = t["extract"] + t["cluster"] + t["train"]
            print(f"| {r} | {name} | {t['extract']:.1f} | {t['cluster']:.1f} | {t['train']:.1f} "
                  f"({t['bank']:.2f}) | {total:.1f} | {total / base:.2f} | {t['nmi']:.3f} |")


if __name__ == "__main__":
    main()
