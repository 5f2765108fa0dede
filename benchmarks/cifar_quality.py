"""Learning quality on CIFAR-10: DeepCluster rounds with dcpipe's defaults, measured per round.

The 50,000 CIFAR-10 training images are split per class into a collection (the rest) and a
held-out part (`--holdout` per class) that no round ever sees. The collection is sharded and
`dcpipe run` performs the rounds exactly as a user's cron would; after each round the model is
measured on held-out images with the labels (evaluation only):

- NMI of the round's own clusters against the labels (clusters.json, whole collection);
- k-means with k = 10 on the held-out images' features: NMI and clustering accuracy (Hungarian);
- weighted k-NN accuracy (k = 20, cosine) of the held-out images against a labelled subset of
  the collection (`--probe` per class),

next to the same measures for the randomly initialised network (round -1 in the table).

    python benchmarks/cifar_quality.py --rounds 6 --work /tmp/cifar-quality
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dcpipe.shards.atomic import read_json
from dcpipe.pipeline.workspace import Workspace
from dcpipe.stages.evaluate import EvalSettings, evaluate

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10" / "train"
DCPIPE = str(Path(sys.executable).parent / "dcpipe")


def link_split(cifar: Path, work: Path, holdout: int, probe: int) -> dict:
    """Symlink folders: collection (all but the last `holdout` of each class), held-out, probe."""
    roots = {name: work / f"src-{name}" for name in ("collection", "heldout", "probe")}
    if all(r.exists() for r in roots.values()):
        return roots
    for class_dir in sorted(p for p in cifar.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        parts = {"collection": files[:-holdout], "heldout": files[-holdout:],
                 "probe": files[:-holdout][:probe]}
        for name, chosen in parts.items():
            target = roots[name] / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (target / f.name).symlink_to(f)
    return roots


def dcpipe(ws: Path, *args) -> None:
    subprocess.run([DCPIPE, "-q", "-w", str(ws), *args], check=True)


def measure(roots: dict, model_path, seed: int) -> dict:
    result = evaluate(roots["probe"], roots["heldout"], settings=EvalSettings(protocols=("knn", "kmeans")),
                      model_path=model_path, seed=seed)
    return {"knn_top1": result["knn"]["top1"], "heldout_nmi": result["kmeans"]["nmi"],
            "heldout_acc": result["kmeans"]["acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cifar", type=Path, default=CIFAR)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cifar-quality"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--holdout", type=int, default=500, help="held-out images per class")
    parser.add_argument("--probe", type=int, default=1000, help="labelled k-NN images per class")
    args = parser.parse_args()
    ws = args.work / "ws"
    roots = link_split(args.cifar, args.work, args.holdout, args.probe)
    results_path = args.work / "quality.json"
    results = read_json(results_path, {})
    if "random" not in results:
        results["random"] = measure(roots, None, seed=0)
    started = time.perf_counter()
    dcpipe(ws, "shard", "--src", str(roots["collection"]))
    results["shard_seconds"] = round(time.perf_counter() - started, 1)
    for r in range(args.rounds):
        if str(r) in results:
            continue
        started = time.perf_counter()
        dcpipe(ws, "run", "--rounds", str(r + 1))
        row = {"seconds": round(time.perf_counter() - started, 1)}
        here = Workspace(ws).round(r)
        row["own_nmi"] = read_json(here.clusters_record)["nmi_true"]
        row.update(measure(roots, here.model, seed=0))
        results[str(r)] = row
        print(json.dumps({"round": r, **row}), flush=True)
        results_path.write_text(json.dumps(results, indent=1))
    print_table(results, args.rounds)


def print_table(results: dict, rounds: int) -> None:
    print("\n| round | NMI own clusters (collection) | k-means k=10 NMI (held-out) | "
          "k-means k=10 ACC (held-out) | k-NN top-1 (held-out) | round wall time |")
    print("|---|---|---|---|---|---|")
    rnd = results["random"]
    print(f"| random init | - | {rnd['heldout_nmi']:.3f} | {rnd['heldout_acc']:.3f} | "
          f"{rnd['knn_top1']:.3f} | - |")
    total = 0.0
    for r in range(rounds):
        row = results[str(r)]
        total += row["seconds"]
        print(f"| {r} | {row['own_nmi']:.3f} | {row['heldout_nmi']:.3f} | {row['heldout_acc']:.3f} | "
              f"{row['knn_top1']:.3f} | {row['seconds']:.0f} s |")
    print(f"\nshard {results['shard_seconds']:.0f} s; rounds {total / 60:.1f} min in all "
          f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
