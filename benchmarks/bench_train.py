"""Training throughput from shards against the model-bound limit, side by side in one run.

For each size N it makes a collection of N real CIFAR-10 JPEGs (class-sorted shards of 500, as
the folder source writes them) with random pseudo-labels (k = 100), then times
  - shards: `train()` itself (balanced sampler, tar reading, JPEG decode + RandomResizedCrop +
    flip in `--workers` loader processes, checkpoints), its loop time only;
  - memory: the same model, optimisers, step function and batch sizes on tensors decoded
    beforehand and held in memory (the data path costs nothing: the model-bound limit).
Both run in this process with torch's default threads; the memory run goes before and after
the shards run and the ratio is against their mean (the machine is shared: load drifts).

    python benchmarks/bench_train.py                       # N = 1000, 2500; default model
    python benchmarks/bench_train.py --sizes 2000 --width 32
"""
import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dcpipe.shards.manifest import add_entry
from dcpipe.shards.naming import make_key
from dcpipe.shards.reader import list_shards
from dcpipe.shards.writer import ShardWriter
from dcpipe.stages.common.images import open_rgb
from dcpipe.stages.common.labels import write_labels
from dcpipe.stages.common.models import build_model, train_transform
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.train import TrainSettings
from dcpipe.stages.train.stage import StepPlan, train, train_step

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10" / "train"
K, SHARD_SIZE = 100, 500


def cifar_files(n: int) -> list[Path]:
    """n files, the same number from each class, in class order (class-sorted shards)."""
    classes = sorted(p for p in CIFAR.iterdir() if p.is_dir())
    per_class = -(-n // len(classes))
    files = [f for c in classes for f in sorted(c.glob("*.jpg"))[:per_class]]
    return files[:n]


def make_collection(root: Path, n: int, seed: int = 0):
    files = cifar_files(n)
    labels = np.random.default_rng(seed).integers(0, K, n).astype(np.int32)
    published = []
    for index, start in enumerate(range(0, n, SHARD_SIZE)):
        writer = ShardWriter(root / "shards", index)
        keys = [make_key(index, row) for row in range(min(SHARD_SIZE, n - start))]
        for key, path in zip(keys, files[start:start + SHARD_SIZE]):
            writer.add(key, path.read_bytes(), {})
        add_entry(root / "shards", writer.commit({}))
        published.append((writer.name, keys, labels[start:start + len(keys)]))
    write_labels(root, published, {"k": K, "round": 0})
    return list_shards(root / "shards"), root / "labels", files, labels


def decoded(files) -> torch.Tensor:
    """The files decoded and augmented once: the memory run's input."""
    transform = train_transform(32)
    return torch.stack([transform(open_rgb(f.read_bytes())) for f in files])


def memory_rate(images, labels, steps: StepPlan, args) -> float:
    """Images/s of the same training steps on pre-decoded tensors."""
    targets = torch.from_numpy(labels.astype(np.int64))
    model = build_model(ModelSpec("small", input_size=32, width=args.width), seed=0, num_classes=K).train()
    optimisers = (torch.optim.SGD(model.body_parameters(), lr=0.05, momentum=0.9,
                                  weight_decay=1e-5),
                  torch.optim.SGD(model.top.parameters(), lr=0.05, weight_decay=1e-5))
    start, done = time.perf_counter(), 0
    for i in range(steps.steps):
        n = steps.batch(0, i)
        rows = torch.arange(done, done + n) % len(images)
        train_step(model, optimisers, images[rows], targets[rows], 1.0 / n)
        done += n
    return done / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2500])
    parser.add_argument("--width", type=int, default=0, help="small net width (0: 64)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            shards, labels_dir, files, labels = make_collection(Path(tmp), n)
            images = decoded(files)
            plan = StepPlan.make([n], args.batch_size)  # the shards run draws ~n: close enough
            before = memory_rate(images, labels, plan, args)
            record = train(shards, labels_dir, Path(tmp) / "round",
                           ModelSpec(input_size=32, width=args.width),
                           TrainSettings(batch_size=args.batch_size, workers=args.workers,
                                         checkpoint_every=10**9), progress=False)
            after = memory_rate(images, labels, plan, args)
            t = record["timings"]
            rows.append((n, record["steps"], before, after, t["images_per_s"],
                         t["data_wait_s"] / t["loop_s"]))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, small net width {args.width or 64}, batch {args.batch_size}, "
          f"{args.workers} loader workers")
    print("| images | steps | memory img/s (before, after) | shards img/s | shards / memory "
          "| waiting for data |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, steps, before, after, shards, waiting in rows:
        print(f"| {n} | {steps} | {before:.1f}, {after:.1f} | {shards:.1f} "
              f"| {shards / ((before + after) / 2):.0%} | {waiting:.1%} |")


if __name__ == "__main__":
    main()
