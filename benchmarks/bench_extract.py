"""Extract stage benchmark: images/s against the model-bound limit, and peak RSS against N.

    .venv/bin/python benchmarks/bench_extract.py [--sizes 32,64] [--n 4096] [--rss-n 10000,100000]

Throughput, per input size: the same model (small, seeded) fed (a) pre-decoded tensors from
memory (the model-bound limit), (b) the data path alone (tar read + JPEG decode + crop through
the DataLoader workers, no model), (c) the real `extract` into a zarr store. Runs alternate and
the best of `--repeats` is kept, because the machine is shared.

Memory: `extract` runs in a child process over collections of two sizes; peak RSS of its main
process (ru_maxrss), of its largest decode worker, and peak PSS of the whole process tree
(sampled by psutil every 0.2 s).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.sample_shards import make_collection  # noqa: E402  (shared synthetic collections)
from support.settings import pop_settings  # noqa: E402

from dcpipe.shards.manifest import has_manifest  # noqa: E402
from dcpipe.shards.reader import list_shards  # noqa: E402
from dcpipe.stages.extract import ExtractSettings, extract  # noqa: E402
from dcpipe.stages.common.models import build_model  # noqa: E402
from dcpipe.stages.common.modelspec import ModelSpec  # noqa: E402
from dcpipe.stages.extract.reader import ShardBatches, ShardJob  # noqa: E402

PER_SHARD = 1000


def collection(root: Path, n: int, image_size: int) -> list:
    shards_dir = root / f"shards-{n}-{image_size}px"
    if not has_manifest(shards_dir):
        shutil.rmtree(shards_dir, ignore_errors=True)
        counts = [PER_SHARD] * (n // PER_SHARD) + ([n % PER_SHARD] if n % PER_SHARD else [])
        make_collection(shards_dir, len(counts), counts, size=image_size, distinct=500)
    return list_shards(shards_dir)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the DataLoader workers)."""
    own, children = (resource.getrusage(who) for who in
                     (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run) -> tuple[float, float]:
    """(images/s wall, CPU ms per image) of `run()`, which returns the images it processed."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    n = run()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return n / wall, 1000 * cpu / n


def model_bound(args, size: int, n: int) -> int:
    model = build_model(ModelSpec("small", input_size=size, width=args.width), seed=0).eval()
    batch = torch.randn(args.batch_size, 3, size, size)
    with torch.inference_mode():
        for _ in range(math.ceil(n / args.batch_size)):
            model.embed(batch).numpy().astype("float16")
    return math.ceil(n / args.batch_size) * args.batch_size


def data_path(args, shards, size: int) -> int:
    jobs = [ShardJob(i, str(s.path), s.n_samples) for i, s in enumerate(shards)]
    loader = DataLoader(ShardBatches(jobs, args.batch_size, size, {}), batch_size=None,
                        num_workers=args.workers, collate_fn=lambda b: b)
    return sum(len(batch["rows"]) for batch in loader)


def extract_run(args, shards, size: int, store: Path) -> int:
    shutil.rmtree(store, ignore_errors=True)
    result = extract(shards, store, ModelSpec(width=args.width, input_size=size),
                     ExtractSettings(batch_size=args.batch_size, workers=args.workers),
                     progress=False)
    return result["samples"]


def throughput(args, root: Path) -> list[dict]:
    rows = []
    for size in args.sizes:
        shards = collection(root, args.n, round(size * 1.25))  # so the resize path runs
        model_bound(args, size, args.batch_size)  # warm-up
        runs = {"model": lambda: model_bound(args, size, args.n),
                "data": lambda: data_path(args, shards, size),
                "extract": lambda: extract_run(args, shards, size, root / "store.zarr")}
        best = {name: (0.0, math.inf) for name in runs}
        for _ in range(args.repeats):  # alternate, keep the best of each (shared machine)
            for name, run in runs.items():
                rate, cpu = timed(run)
                best[name] = (max(best[name][0], rate), min(best[name][1], cpu))
        rows.append({"size": size, **best})
    return rows


def child_extract(options: dict) -> None:
    """Runs in the measured child: extract, then its own and its workers' peak RSS."""
    shards = list_shards(options.pop("shards_dir"))
    store = options.pop("store")
    result = extract(shards, store, pop_settings(ModelSpec, options),
                     pop_settings(ExtractSettings, options), **options)
    result["main_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["worker_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


def tree_pss(proc: psutil.Process) -> int:
    """Proportional set size of a process and its children: forked workers share the parent's
    pages copy-on-write, which a sum of RSS would count once per process."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


def memory(args, root: Path) -> list[dict]:
    rows = []
    for n in args.rss_n:
        shards = collection(root, n, 40)
        store = root / f"rss-{n}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        options = {"shards_dir": str(shards[0].path.parent), "store": str(store), "arch": "small",
                   "width": args.width, "input_size": 32, "seed": 0, "workers": args.workers,
                   "batch_size": args.batch_size, "progress": False}
        child = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(options)],
                                 stdout=subprocess.PIPE, text=True)
        proc, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            try:
                peak = max(peak, tree_pss(proc))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        result = json.loads(child.stdout.read().strip().splitlines()[-1])
        rows.append({"n": n, "rows": result["rows"], "images_per_s": result["images_per_s"],
                     "main": result["main_peak_mb"], "worker": result["worker_peak_mb"],
                     "tree": peak / 2**20})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--n", type=int, default=4096, help="images per throughput run")
    parser.add_argument("--rss-n", default="10000,100000")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work-dir", default="/tmp/dcpipe-bench-extract")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_extract(json.loads(args.child))
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.rss_n = [int(s) for s in args.rss_n.split(",") if s]
    root = Path(args.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, decode workers {args.workers}, "
          f"batch {args.batch_size}, small width {args.width}, cpus {psutil.cpu_count()}")
    print("\n| input | model-bound img/s | data path img/s | extract img/s | extract / model "
          "| CPU ms/img model | CPU ms/img data | CPU ms/img extract |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in throughput(args, root):
        (model, model_cpu), (data, data_cpu), (ext, ext_cpu) = r["model"], r["data"], r["extract"]
        print(f"| small@{r['size']} | {model:.0f} | {data:.0f} | {ext:.0f} | {ext / model:.0%} "
              f"| {model_cpu:.2f} | {data_cpu:.2f} | {ext_cpu:.2f} |")
    print("\n| samples | store rows | extract img/s | peak RSS main MB | peak RSS worker MB "
          "| peak PSS tree MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in memory(args, root):
        print(f"| {r['n']} | {r['rows']} | {r['images_per_s']:.0f} | {r['main']:.0f} "
              f"| {r['worker']:.0f} | {r['tree']:.0f} |")


if __name__ == "__main__":
    main()
