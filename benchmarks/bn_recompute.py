"""Held-out k-means and k-NN of a cifar_quality.py run's last model, as saved and with its
BatchNorm running statistics recomputed over a random sample of the collection (no labels).

Training leaves running statistics from its last batches: multi-crop batches (32 and 16 px crops,
colour distortion) and, at the end of each pass, the tail of the shard order. This measures what
that costs the features the k-means sees.

    python benchmarks/bn_recompute.py --work /tmp/cq-re2-s1 [--images 10240] [--sample-seed 0]
"""
import argparse
import random
from pathlib import Path

import torch

from dcpipe.pipeline.workspace import Workspace
from dcpipe.stages.common.images import open_rgb
from dcpipe.stages.common.models import eval_transform, load_model, save_model
from dcpipe.stages.evaluate import EvalSettings, evaluate


def recompute_bn(model: torch.nn.Module, files: list[Path], input_size: int, batch: int = 256):
    """Running statistics as the plain average over `files` (momentum None), eval transform."""
    transform = eval_transform(input_size)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for i in range(0, len(files), batch):
            model(torch.stack([transform(open_rgb(f.read_bytes())) for f in files[i:i + batch]]))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a cifar_quality.py --work folder")
    parser.add_argument("--images", type=int, default=10240, help="collection images to average over")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the run's training seed")
    args = parser.parse_args()
    saved = Workspace(args.work / "ws").rounds()[-1].model
    model, meta = load_model(saved)
    files = sorted(p for p in (args.work / "src-collection").rglob("*") if p.is_file())
    random.Random(args.sample_seed).shuffle(files)
    recompute_bn(model, files[:args.images], meta["input_size"])
    recomputed = args.work / "bn-recomputed" / "model.pt"
    recomputed.parent.mkdir(exist_ok=True)
    save_model(recomputed, model, meta)
    settings = EvalSettings(protocols=("kmeans", "knn"), kmeans_l2=True, kmeans_runs=5)
    print(f"{saved}; running statistics over {args.images} images, sample seed {args.sample_seed}")
    print("| model | k-means ACC | k-means NMI | k-NN top-1 |\n|---|---|---|---|")
    for name, path in (("as saved", saved), ("BN recomputed", recomputed)):
        r = evaluate(args.work / "src-probe", args.work / "src-heldout", None, settings,
                     model_path=path, seed=args.seed)
        km = r["kmeans"]
        print(f"| {name} | {km['acc']:.3f} ± {km['acc_std']:.3f} | {km['nmi']:.3f} ± "
              f"{km['nmi_std']:.3f} | {r['knn']['top1']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
