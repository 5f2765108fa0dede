"""Shard stage throughput, side by side: dcpipe vs the Pillow floor vs img2dataset.

For each input size N (real photos repeated to N inputs) and each round (interleaved, so that
load from other processes hits every contender alike; the best round counts):
  floor        benchmarks/pillow_floor.py on the local files: read, decode, shrink, encode
  dcpipe-file  `shard()` on a text list of the same local paths
  dcpipe-http  `shard()` on URLs of the same files served by a local HTTP server (127.0.0.1)
  img2dataset  img2dataset (its own venv; --img2dataset PATH) on the same URLs, same geometry
Every contender uses the same number of processes (and both tools the same shard size: a
shard is one process's work) and is timed end to end as a fresh subprocess (interpreter
start and imports included). Prints a table of images/s and ratios.

    python benchmarks/bench_shard.py --sizes 500 2000 --workers 2 \
        --img2dataset /tmp/i2d-venv/bin/img2dataset [--simd-python /tmp/simd-venv/bin/python]

`--simd-python` adds a one-core floor of pillow-simd against this venv's Pillow.
"""

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "photos"
FLOOR = Path(__file__).with_name("pillow_floor.py")
RUN_SHARD = ("import json, sys; from dcpipe.stages.shard import ShardSettings, shard; "
             "settings = ShardSettings(workers=int(sys.argv[3]), shard_size=int(sys.argv[4])); "
             "print(json.dumps(shard(sys.argv[1], sys.argv[2], settings, progress=False)))")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory: Path) -> ThreadingHTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def inputs(photos: list[Path], n: int, base_url: str, tmp: Path) -> tuple[Path, Path]:
    """A list of n local paths and a list of n distinct URLs (photos repeated, ?r=copy)."""
    picked = [(photos[i % len(photos)], i // len(photos)) for i in range(n)]
    paths = tmp / f"paths-{n}.txt"
    paths.write_text("".join(f"{p}\n" for p, _ in picked))
    urls = tmp / f"urls-{n}.txt"
    urls.write_text("".join(f"{base_url}/{p.relative_to(PHOTOS).as_posix()}?r={r}\n"
                            for p, r in picked))
    return paths, urls


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {done.stderr[-2000:]}")
    return seconds, done.stdout


def run_floor(python: str, paths: Path, workers: int) -> float:
    return timed([python, str(FLOOR), str(paths), "--processes", str(workers)])[0]


def run_dcpipe(source: Path, out: Path, opts, n: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    seconds, stdout = timed([sys.executable, "-c", RUN_SHARD, str(source), str(out),
                             str(opts.workers), str(opts.shard_size)])
    stats = json.loads(stdout.strip().splitlines()[-1])
    assert stats["written"] == n, f"dcpipe wrote {stats['written']} of {n}: {stats['rejects']}"
    return seconds


def run_img2dataset(exe: str, urls: Path, out: Path, opts, n: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    seconds, _ = timed([exe, str(urls), "--output_folder", str(out), "--output_format",
                        "webdataset", "--processes_count", str(opts.workers),
                        "--thread_count", "32",
                        "--image_size", "256", "--resize_mode", "keep_ratio",
                        "--resize_only_if_bigger", "True", "--encode_quality", "95",
                        "--extract_exif", "False",
                        "--number_sample_per_shard", str(opts.shard_size),
                        "--retries", "0", "--enable_wandb", "False"])
    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    assert ok == n, f"img2dataset wrote {ok} of {n}"
    return seconds


def measure(n, paths, urls, opts, tmp) -> dict:
    """Best-of-rounds seconds per contender for one size."""
    contenders = {
        "floor": lambda: run_floor(sys.executable, paths, opts.workers),
        "dcpipe-file": lambda: run_dcpipe(paths, tmp / "dc-file", opts, n),
        "dcpipe-http": lambda: run_dcpipe(urls, tmp / "dc-http", opts, n),
    }
    if opts.img2dataset and Path(opts.img2dataset).exists():
        contenders["img2dataset"] = lambda: run_img2dataset(opts.img2dataset, urls,
                                                            tmp / "i2d", opts, n)
    best = {}
    for _ in range(opts.rounds):
        for name, run in contenders.items():
            best[name] = min(best.get(name, float("inf")), run())
    return {name: n / s for name, s in best.items()}


def print_table(results: dict, workers: int) -> None:
    print(f"\nshard stage, {workers} processes, images/s (best of rounds; higher is better)")
    print(f"{'N':>6} {'contender':<12} {'img/s':>8} {'vs floor':>9} {'vs img2dataset':>15}")
    for n, rates in results.items():
        for name, rate in rates.items():
            vs_i2d = f"{rate / rates['img2dataset']:.2f}x" if "img2dataset" in rates else "-"
            print(f"{n:>6} {name:<12} {rate:>8.1f} {rate / rates['floor']:>8.2f}x {vs_i2d:>15}")


def simd_table(simd_python: str, paths: Path, rounds: int) -> None:
    best = {}
    for _ in range(rounds):
        for label, python in (("Pillow", sys.executable), ("pillow-simd", simd_python)):
            _, out = timed([python, str(FLOOR), str(paths), "--processes", "1"])
            result = json.loads(out.strip().splitlines()[-1])
            key = f"{label} {result['pil']}"
            best[key] = max(best.get(key, 0.0), result["images_per_s"])
    print("\ndecode + shrink to 256 + encode, one core, real photos (best of rounds)")
    for key, rate in best.items():
        print(f"  {key:<28} {rate:8.1f} img/s")


def main():
    parser = argparse.ArgumentParser(description="shard stage throughput vs floor and img2dataset")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=250,
                        help="rows per shard, both tools (whole shards go to one process each)")
    parser.add_argument("--img2dataset", default="/tmp/i2d-venv/bin/img2dataset",
                        help="img2dataset executable (column skipped if absent)")
    parser.add_argument("--simd-python", help="python of a venv with pillow-simd")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    opts = parser.parse_args()
    photos = sorted(opts.photos.rglob("*.jpg"))
    if not photos:
        print(f"bench_shard: skipped, no photos under {opts.photos} (pass --photos DIR)")
        return
    httpd = serve(opts.photos)
    base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {}
        for n in opts.sizes:
            paths, urls = inputs(photos, n, base_url, tmp)
            results[n] = measure(n, paths, urls, opts, tmp)
        print_table(results, opts.workers)
        if opts.simd_python:
            simd_table(opts.simd_python, inputs(photos, len(photos), base_url, tmp)[0], opts.rounds)
    httpd.shutdown()


if __name__ == "__main__":
    main()
