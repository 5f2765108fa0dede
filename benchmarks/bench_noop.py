"""What a cron run with nothing to do costs, at scale.

Builds once (in --work, reused by later runs) a workspace whose source list (a text list, one
local path a line) has --rows rows: all but --images of them paths that do not exist (each
rejected at once as not found, as dead rows of a real crawl are), and --images small real JPEGs
made here, spread evenly over the list; shards it and runs --rounds rounds with tiny settings.
Then times, --repeats times each, as cron runs them (a fresh `dcpipe -q` process, wall time):

    shard   dcpipe shard --src LIST    every row already sharded
    run     dcpipe run --rounds N      every round complete
    status  dcpipe status

and profiles one more call of each (cProfile: the dcpipe functions by cumulative time, and the
functions with most time of their own). With --baseline TREE (another checkout of dcpipe, e.g.
`git archive <commit> | tar -x -C TREE`) each repeat also runs the same command with TREE on
PYTHONPATH, and the table shows both, side by side, and their ratio.

    python benchmarks/bench_noop.py --rows 100000 --baseline /tmp/dcpipe-before
    python benchmarks/bench_noop.py --rows 1000000 --work /tmp/noop1m --baseline /tmp/dcpipe-before
"""

import argparse
import io
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DCPIPE = str(Path(sys.executable).parent / "dcpipe")
CONFIG = """
[shard]
image_size = 32
[model]
width = 8
[extract]
batch_size = 64
workers = 0
[cluster]
k = 10
pca_dim = 16
[train]
method = "deepcluster"
batch_size = 64
workers = 1
"""


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n 32x32 JPEGs of coloured rectangles on noise (decodable, distinct)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            pixels = rng.integers(0, 64, (32, 32, 3), dtype=np.uint8)
            y, x = rng.integers(0, 24, 2)
            pixels[y:y + 8, x:x + 8] = rng.integers(0, 256, 3)
            Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def write_list(path: Path, n_rows: int, images: list[Path], missing: Path) -> None:
    """n_rows paths, one a line: the images every n_rows/len(images) rows, the rest missing."""
    every = max(1, n_rows // len(images))
    with open(path, "w") as f:
        for row in range(n_rows):
            real = row % every == 0 and row // every < len(images)
            f.write(f"{images[row // every] if real else missing / f'{row:08d}.jpg'}\n")


def dcpipe(ws: Path, *args: str, tree: Path = REPO) -> float:
    """Wall seconds of one `dcpipe` process importing dcpipe from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    subprocess.run([DCPIPE, "-w", str(ws), *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def build(work: Path, n_rows: int, n_images: int, n_rounds: int) -> tuple[Path, Path]:
    ws, src = work / "ws", work / f"list{n_rows}.txt"
    if not src.exists():
        write_list(src, n_rows, make_images(work / "images", n_images), work / "missing")
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "dcpipe.toml").write_text(CONFIG)
    print(f"shard {n_rows} rows: {dcpipe(ws, '-q', 'shard', '--src', str(src)):.1f} s", flush=True)
    print(f"run {n_rounds} rounds: {dcpipe(ws, '-q', 'run', '--rounds', str(n_rounds)):.1f} s",
          flush=True)
    return ws, src


def profile(ws: Path, args: list[str], top: int, out: Path) -> str:
    """One more call under cProfile, in a fresh process as cron starts it (imports included):
    the dcpipe functions by cumulative time, then the functions with most time of their own."""
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), DCPIPE, "-w", str(ws), "-q",
                    *args], check=True, stdout=subprocess.DEVNULL)
    text = io.StringIO()
    stats = pstats.Stats(str(out), stream=text)
    stats.sort_stats("cumulative").print_stats(r"dcpipe/(?!pipeline/cli\.py)", top)
    stats.sort_stats("tottime").print_stats(top // 2)
    return "\n".join(line for line in text.getvalue().splitlines()
                     if line.strip() and not line.startswith(("   Ordered", "   List reduced")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=2_000, help="Real images among the rows.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=14, help="Profile lines shown per command.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dcpipe-bench-noop"))
    parser.add_argument("--baseline", type=Path, help="Another dcpipe source tree to compare with.")
    a = parser.parse_args()
    ws, src = build(a.work, a.rows, a.images, a.rounds)
    commands = {"shard": ["shard", "--src", str(src)], "run": ["run", "--rounds", str(a.rounds)],
                "status": ["status"]}
    trees = {"this": REPO, **({"baseline": a.baseline} if a.baseline else {})}
    times = {(name, tree): [] for name in commands for tree in trees}
    for _ in range(a.repeats):  # alternated: both trees see the same machine load
        for (name, tree), spent in times.items():
            spent.append(dcpipe(ws, "-q", *commands[name], tree=trees[tree]))
    sizes = {p.name: p.stat().st_size for p in sorted((ws / "shards").glob("*.json*"))}
    print(f"\nno-op cron runs: {a.rows} source rows, {len(list((ws / 'shards').glob('*.tar')))} "
          f"shards, {a.rounds} rounds (manifest {sizes.get('manifest.jsonl', 0) / 1e6:.1f} MB, "
          f"plan {sizes.get('plan.json', 0) / 1e6:.2f} MB), {a.repeats} repeats, wall seconds")
    print(f"{'command':<8} {'tree':<9} {'first':>7} {'median':>7} {'min':>7} {'max':>7} "
          f"{'baseline/this':>14}")
    for (name, tree), t in times.items():
        ratio = (statistics.median(times[name, "baseline"]) / statistics.median(t)
                 if tree == "this" and a.baseline else None)
        print(f"{name:<8} {tree:<9} {t[0]:>7.2f} {statistics.median(t):>7.2f} {min(t):>7.2f} "
              f"{max(t):>7.2f} {'' if ratio is None else f'{ratio:.1f}x':>14}")
    for name, args in commands.items():
        print(f"\n---- profile: dcpipe {' '.join(args)}\n"
              f"{profile(ws, args, a.top, a.work / f'{name}.prof')}")


if __name__ == "__main__":
    main()
