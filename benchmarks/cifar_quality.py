"""Learning quality on CIFAR-10 at a fixed wall-clock budget: what a method learns per CPU-hour.

The 50,000 CIFAR-10 training images are split per class into a collection (the rest) and a
held-out part (`--holdout` per class) that no round ever sees. The collection is sharded (not
counted in the budget), then `dcpipe run` performs rounds exactly as a user's cron would, round
after round, while the next round still fits in the budget (`--budget-minutes`, measured from
the first round's start; a cosine schedule is fitted to the rounds that fit: the first round is
its warm-up, after it and after each round of the first third the recent round times set [train]
total_rounds). Then the last model and a random init of the same architecture are measured with
labels (evaluation only):

- k-means with k = 10 on the held-out images' features (the clustering feature: v1's
  penultimate layer, v2's projection), L2-normalised: ACC (Hungarian) and NMI, mean and spread
  over `--kmeans-runs` seeds;
- weighted k-NN top-1 (k = 20, cosine) of the held-out images against a labelled part of the
  collection (`--probe` per class);
- linear probes on every conv layer and the clustering feature; the best one is reported;
- training images per second (all crops of an image count as one image);
- the machine's model-bound speed before and after the rounds (crops/s of v2's width-32 net at
  32 px, bf16 + channels_last, as benchmarks/bench_precision.py measures it): this machine has
  run 1.6x slower on one day than on another, and a budget buys rounds in proportion.

    python benchmarks/cifar_quality.py --method deepcluster-v2 --budget-minutes 60 \\
        --work /tmp/cq-v2 [--set train.lr=0.3 --set model.width=32 ...]

Any ImageNet-style folder works in place of CIFAR-10 (`--images`), and `--rounds N` runs a
fixed number of rounds instead of a budget (e.g. the 450 photos of ../shared/datasets/photos at
64 px: `--images ../shared/datasets/photos --holdout 30 --probe 100 --rounds 4
--set model.input_size=64 --set cluster.k=30`). A `--rounds` run that was stopped (a reboot, a
kill) continues with the same command plus `--resume`: `dcpipe run` picks the interrupted round up
from its checkpoint, and the finished rounds' rows come from `rounds.jsonl` in `--work`. A budget
run cannot resume: its clock is the measure.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import tomli_w

from dcpipe.pipeline import config as configuration
from dcpipe.pipeline.methods import DEFAULT_METHOD, METHOD_CHANGES
from dcpipe.pipeline.workspace import Workspace
from dcpipe.shards.atomic import read_json
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.evaluate import EvalSettings, evaluate

from bench_precision import VARIANTS, images_per_s  # a sibling script: the same reading

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
                (target / f.name).symlink_to(f.resolve())  # a relative --images would dangle
    return roots


def parse_sets(items: list[str]) -> dict:
    """["train.lr=0.3", "model.sobel=false"] -> {"train": {"lr": 0.3}, "model": {"sobel": False}}."""
    changes: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        changes.setdefault(section, {})[name] = tomllib.loads(f"v = {value}")["v"]
    return changes


def config_values(method: str, changes: dict, seed: int) -> dict:
    return {"seed": seed, **changes, "train": {"method": method, **changes.get("train", {})}}


def write_config(ws: Workspace, method: str, changes: dict, seed: int) -> configuration.Config:
    """dcpipe.toml naming the seed, the method and the changes; returns the config it loads as."""
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.config_path.write_text(tomli_w.dumps(config_values(method, changes, seed)))
    return ws.config()


def dcpipe(ws: Workspace, *args) -> None:
    subprocess.run([DCPIPE, "-q", "-w", str(ws.root), *args], check=True)


def set_total_rounds(ws: Workspace, total: int) -> None:
    values = read_toml(ws.config_path)
    values.setdefault("train", {})["total_rounds"] = total
    ws.config_path.write_text(tomli_w.dumps(values))


def read_toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def run_rounds(ws: Workspace, config: configuration.Config, budget_s: float, log,
               rows_path: Path, rounds: int = 0) -> list[dict]:
    """Rounds while the next one fits in the budget (or exactly `rounds` of them, after those a
    resumed run finished); returns each round's time and record, also kept in `rows_path`."""
    rows, started = read_rows(rows_path), time.perf_counter()
    fitted = config.train.lr_schedule == "cosine" and config.train.total_rounds == 0
    total, r = config.train.total_rounds, len(rows)
    while True:
        begun = time.perf_counter()
        dcpipe(ws, "run", "--rounds", str(r + 1))
        seconds = time.perf_counter() - begun
        here = ws.round(r)
        train = read_json(here.train_record)
        rows.append({"round": r, "seconds": round(seconds, 1),
                     "own_nmi": read_json(here.clusters_record)["nmi_true"],
                     "final_loss": train["final_loss"],
                     "images_per_s": train["timings"]["images_per_s"]})
        log(json.dumps(rows[-1]))
        with rows_path.open("a") as rows_file:
            rows_file.write(json.dumps(rows[-1]) + "\n")
        elapsed = time.perf_counter() - started
        if rounds:
            if r + 1 == rounds:
                return rows
            r += 1
            continue
        if fitted and (r < 2 or r < total // 3):
            # the schedule spans the rounds the budget holds: guessed from the warm-up round,
            # then refitted from the median of the last 3 rounds (round 0 also pays for the
            # random init's features) while the lr is still near its peak, so that a slow start
            # does not leave the budget's end unused and a late change barely moves the decay
            typical = statistics.median(row["seconds"] for row in rows[max(1, r - 2):]) if r else seconds
            total = r + 1 + max(0, int((budget_s - elapsed) // typical))
            set_total_rounds(ws, total)
            log(f"cosine schedule over {total} rounds")
        r += 1
        if (total and r >= total) or elapsed + seconds > budget_s:
            return rows


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def start(ws: Workspace, args, roots: dict) -> tuple[configuration.Config, float]:
    """A new workspace: its config and shards; returns the config and the shard time."""
    if ws.rounds():
        raise SystemExit(f"{ws.root} already has rounds: use a new --work folder or --resume")
    config = write_config(ws, args.method, parse_sets(args.sets), args.seed)
    started = time.perf_counter()
    if args.shards_from:
        shutil.copytree(args.shards_from, ws.shards_dir, copy_function=os.link)
    else:
        dcpipe(ws, "shard", "--src", str(roots["collection"]))
    if args.rounds and config.train.total_rounds == 0:
        set_total_rounds(ws, args.rounds)
    return config, time.perf_counter() - started


def resumed(ws: Workspace, args) -> configuration.Config:
    """An interrupted `--rounds` run's config; refuses any other."""
    if not args.rounds:
        raise SystemExit("--resume needs --rounds: a budget's clock cannot resume")
    if not ws.config_path.exists():
        raise SystemExit(f"nothing to resume in {ws.root}")
    config = ws.config()
    asked = config_values(args.method, parse_sets(args.sets), args.seed)
    written = read_toml(ws.config_path)
    for values in (asked, written):  # --rounds writes it when no --set does
        values["train"].pop("total_rounds", None)
    if written != asked:
        raise SystemExit(f"{ws.config_path} holds {written}, these arguments ask {asked}")
    return config


def machine_speed() -> int:
    """Crops/s of a fixed model-bound training step: which machine a budget's figures came from."""
    return round(images_per_s(32, 32, VARIANTS["bf16 + channels_last"], batch=128, steps=16))


def measure(roots: dict, model_path, spec: ModelSpec, seed: int, runs: int) -> dict:
    """Held-out quality of a model (or the random init of `spec`), as the README table shows."""
    settings = EvalSettings(protocols=("linear", "knn", "kmeans"), kmeans_l2=True, kmeans_runs=runs)
    result = evaluate(roots["probe"], roots["heldout"], spec, settings, model_path=model_path,
                      seed=seed)
    linear = {name: probe["top1"] for name, probe in result["linear"].items()}
    best = max(linear, key=linear.get)
    km = result["kmeans"]
    return {"kmeans_acc": km["acc"], "kmeans_acc_std": km["acc_std"], "kmeans_nmi": km["nmi"],
            "kmeans_nmi_std": km["nmi_std"], "kmeans_per_run": km["per_run"],
            "knn_top1": result["knn"]["top1"],
            "best_linear": linear[best], "best_linear_layer": best, "linear": linear}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHOD_CHANGES))
    parser.add_argument("--budget-minutes", type=float, default=60.0)
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="a setting, section.name=TOML value (repeatable)")
    parser.add_argument("--images", type=Path, default=CIFAR, help="an ImageNet-style folder")
    parser.add_argument("--rounds", type=int, default=0, help="this many rounds, not a budget")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cifar-quality"))
    parser.add_argument("--holdout", type=int, default=500, help="held-out images per class")
    parser.add_argument("--probe", type=int, default=1000, help="labelled probe images per class")
    parser.add_argument("--kmeans-runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="the workspace's base seed (training)")
    parser.add_argument("--shards-from", type=Path,
                        help="a shards folder of the same collection to link instead of sharding")
    parser.add_argument("--resume", action="store_true",
                        help="continue a stopped --rounds run in --work (same arguments)")
    args = parser.parse_args()
    rows_path = args.work / "rounds.jsonl"
    roots = link_split(args.images, args.work, args.holdout, args.probe)
    ws = Workspace(args.work / "ws")
    if args.resume:
        config, shard_s = resumed(ws, args), 0.0
    else:
        config, shard_s = start(ws, args, roots)
        rows_path.unlink(missing_ok=True)
    log = lambda message: print(message, flush=True)  # noqa: E731
    speed_before = machine_speed()
    rows = run_rounds(ws, config, args.budget_minutes * 60, log, rows_path, args.rounds)
    speed = [speed_before, machine_speed()]
    last = ws.round(rows[-1]["round"]).model
    trained = measure(roots, last, config.model, config.seed, args.kmeans_runs)
    random = measure(roots, None, config.model, config.seed, args.kmeans_runs)
    result = {"method": args.method, "seed": args.seed, "sets": args.sets, "images": str(args.images),
              "budget_minutes": 0 if args.rounds else args.budget_minutes, "resumed": args.resume,
              "shard_s": round(shard_s, 1), "rounds": rows,
              "rounds_s": round(sum(r["seconds"] for r in rows), 1),
              "config": configuration.load(ws.config_path).as_dict(),
              "trained": trained, "random": random, "cpus": os.cpu_count(),
              "machine_crops_per_s": speed}
    (args.work / "quality.json").write_text(json.dumps(result, indent=1))
    print_table(result)


def print_table(result: dict) -> None:
    rows = result["rounds"]
    img_s = sum(r["images_per_s"] for r in rows) / len(rows)
    print(f"\n{result['method']} {' '.join(result['sets'])}: {len(rows)} rounds in "
          f"{result['rounds_s'] / 60:.1f} min (budget {result['budget_minutes']:.0f} min), "
          f"train {img_s:.0f} img/s, shard {result['shard_s']:.0f} s, {result['cpus']} cores, "
          f"machine {' -> '.join(map(str, result['machine_crops_per_s']))} crops/s")
    print("| model | k-means ACC | k-means NMI | k-NN top-1 | best linear probe |")
    print("|---|---|---|---|---|")
    for name in ("trained", "random"):
        m = result[name]
        print(f"| {name} | {m['kmeans_acc']:.3f} ± {m['kmeans_acc_std']:.3f} | "
              f"{m['kmeans_nmi']:.3f} ± {m['kmeans_nmi_std']:.3f} | {m['knn_top1']:.3f} | "
              f"{m['best_linear']:.3f} ({m['best_linear_layer']}) |")


if __name__ == "__main__":
    main()
