"""Model-bound training speed of the small net: fp32, channels_last, bf16 autocast, both, and
torch.compile, side by side in one run (pre-made tensors, no data path).

Each variant trains the same model (DeepCluster-v2's: projection head, 3 heads of prototypes)
for a few steps at each crop size; the table gives images per second and the ratio to fp32.

    python benchmarks/bench_precision.py [--widths 32 64] [--sizes 32 16] [--steps 8] [--threads 1 2]

`--threads` repeats the table for each intra-op thread count (training runs 2 loader workers
beside the main process, so fewer threads than cores may pay).
"""
import argparse
import platform
import time

import torch
import torch.nn.functional as F

from dcpipe.stages.common.models import build_model
from dcpipe.stages.common.modelspec import ModelSpec

VARIANTS = {  # name: (channels_last, bf16, compile)
    "fp32": (False, False, False),
    "channels_last": (True, False, False),
    "bf16": (False, True, False),
    "bf16 + channels_last": (True, True, False),
    "bf16 + channels_last + compile": (True, True, True),
}


def images_per_s(width: int, size: int, variant: tuple, batch: int, steps: int) -> float:
    channels_last, bf16, compiled = variant
    model = build_model(ModelSpec(sobel=False, width=width, projection=128), seed=0)
    model.set_prototypes([torch.randn(300, 128)] * 3, 0.1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 300, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    warmup = 4
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(F.cross_entropy(logits.float(), y) for logits in net(x))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 16])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    args = parser.parse_args()
    print(f"{platform.machine()}, torch {torch.__version__}, batch {args.batch}, "
          f"{args.steps} timed steps after 4 warm-up steps; ratios to fp32 at the first thread count")
    print("| threads | width | px | " + " | ".join(args.variants) + " |")
    print("|---|---|---|" + "---|" * len(args.variants))
    baseline = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for width in args.widths:
            for size in args.sizes:
                rates = [images_per_s(width, size, VARIANTS[v], args.batch, args.steps)
                         for v in args.variants]
                base = baseline.setdefault((width, size), rates[0])
                cells = [f"{r:.0f} ({r / base:.2f}x)" for r in rates]
                print(f"| {threads} | {width} | {size} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
