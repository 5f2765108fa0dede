"""What verifying shards as they are streamed costs: reads of the same tars, side by side.

    python benchmarks/bench_verify.py [--shards 8] [--per-shard 1000] [--sizes 32,128] [--repeats 5]

Per image size, every shard is read start to end in four ways, alternating, best of `--repeats`
kept (the machine is shared): tarfile's own seeking reader (what dcpipe used before), dcpipe's
`iter_shard` without a digest, `iter_shard` verifying the manifest's sha256 on the way (what
extract, train and eval do with shards of ours), and for scale the JPEG decode of the same
images (the work each sample costs the extract stage anyway, before the model).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.sample_shards import make_collection  # noqa: E402

from dcpipe.shards.reader import iter_shard  # noqa: E402
from dcpipe.stages.common.images import open_rgb  # noqa: E402


def tarfile_seeking(shards) -> int:
    n = 0
    for shard in shards:
        with tarfile.open(shard.path, mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    n += len(tar.extractfile(info).read()) > 0
    return n


def unverified(shards) -> int:
    return sum(1 for shard in shards for _ in iter_shard(shard.path))


def verified(shards) -> int:
    return sum(1 for shard in shards for _ in iter_shard(shard.path, shard.sha256))


def decoded(shards) -> int:
    return sum(open_rgb(s.image).size[0] > 0 for shard in shards for s in iter_shard(shard.path))


WAYS = {"tarfile r: (before)": tarfile_seeking, "iter_shard, no digest": unverified,
        "iter_shard + sha256": verified, "... + JPEG decode": decoded}


def best_times(shards, repeats: int) -> dict[str, float]:
    best = dict.fromkeys(WAYS, float("inf"))
    for _ in range(repeats):
        for name, read in WAYS.items():
            start = time.perf_counter()
            read(shards)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--sizes", default="32,128", help="image sizes (px), comma list")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    try:
        print(f"{'px':>4} {'MB':>6} {'way of reading':<22} {'s':>7} {'MB/s':>7} {'vs no digest':>12}")
        for size in (int(s) for s in args.sizes.split(",")):
            shards = make_collection(root / f"{size}px", args.shards, args.per_shard, size=size,
                                     distinct=500)
            mb = sum(s.path.stat().st_size for s in shards) / 1e6
            for path in (s.path for s in shards):
                path.read_bytes()  # page cache warm for every way alike
            times = best_times(shards, args.repeats)
            base = times["iter_shard, no digest"]
            for name, t in times.items():
                print(f"{size:>4} {mb:>6.1f} {name:<22} {t:>7.3f} {mb / t:>7.0f} {t / base:>12.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
