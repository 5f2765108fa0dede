"""The image library alone: read, decode, shrink to 256 on the shorter side, encode JPEG.

Imports only PIL and the standard library, so it runs under any interpreter (the project venv's
Pillow, or a throwaway venv with pillow-simd). Prints one JSON line: images, seconds, images/s.

    python benchmarks/pillow_floor.py LIST_OF_PATHS [--processes N] [--size 256] [--quality 95]
"""

import argparse
import io
import json
import multiprocessing
import time

import PIL
from PIL import Image


def shrink(path: str, size: int = 256, quality: int = 95) -> int:
    with open(path, "rb") as f:
        img = Image.open(io.BytesIO(f.read()))
    w, h = img.size
    scale = min(1.0, size / min(w, h))
    target = (max(1, round(w * scale)), max(1, round(h * scale)))
    if img.format == "JPEG":
        img.draft("RGB", target)
    img = img.convert("RGB")
    if img.size != target:
        img = img.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.tell()


def _shrink_args(args):
    return shrink(*args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", help="text file, one image path per line")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--quality", type=int, default=95)
    opts = parser.parse_args()
    with open(opts.paths) as f:
        jobs = [(line.strip(), opts.size, opts.quality) for line in f if line.strip()]
    with multiprocessing.Pool(opts.processes) as pool:
        pool.map(abs, range(opts.processes))  # workers up before the clock starts
        start = time.perf_counter()
        pool.map(_shrink_args, jobs, chunksize=16)
        seconds = time.perf_counter() - start
    print(json.dumps({"images": len(jobs), "seconds": round(seconds, 3),
                      "images_per_s": round(len(jobs) / seconds, 1), "pil": PIL.__version__}))


if __name__ == "__main__":
    main()
