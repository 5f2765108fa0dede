"""Model-bound training speed of the small net: fp32, channels_last, bf16 autocast, both, and
torch.compile, side by side in one run (pre-made tensors, no data path).

Each variant trains the same model (DeepCluster-v2's: projection head, 3 heads of prototypes)
for a few steps at each crop size; the table gives images per second and the ratio to fp32.

    python benchmarks/bench_precision.py [--widths 32 64] [--sizes 32 16] [--steps 8]
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
    args = parser.parse_args()
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, {args.steps} timed steps after 4 warm-up steps")
    print("| width | px | " + " | ".join(args.variants) + " |")
    print("|---|---|" + "---|" * len(args.variants))
    for width in args.widths:
        for size in args.sizes:
            rates = [images_per_s(width, size, VARIANTS[v], args.batch, args.steps)
                     for v in args.variants]
            cells = [f"{r:.0f} ({r / rates[0]:.2f}x)" for r in rates]
            print(f"| {width} | {size} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
