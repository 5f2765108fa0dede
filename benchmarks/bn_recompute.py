"""Held-out quality of a cifar_quality.py run's last model, as saved and with its BatchNorm
running statistics recomputed over a random sample of the collection (no labels), as
`[train] bn_images` recomputes them at the end of a round (stages/train/running_stats.py).

Training leaves running statistics from its last batches: multi-crop batches (32 and 16 px crops,
colour distortion) and, at the end of each pass, the tail of the shard order. This measures what
that costs the features the k-means sees. `--random` measures the random init of the run's
seed the same way (the baseline's statistics are its initial ones, mean 0 and variance 1),
`--linear` adds the linear probes.

    python benchmarks/bn_recompute.py --work /tmp/cq-re2-s1 --seed 1 [--images 10240]
        [--sample-seed 0] [--random] [--linear]
"""
import argparse
import random
from pathlib import Path

from dcpipe.pipeline.workspace import Workspace
from dcpipe.stages.common.distributed import ProcessGroup
from dcpipe.stages.common.models import eval_transform, load_model, random_init, save_model
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.evaluate import EvalSettings, evaluate
from dcpipe.stages.train.running_stats import recompute


def recomputed(model, meta: dict, files: list[Path], out: Path) -> Path:
    """`model` with statistics over `files` (fp32, batches of 256), saved to `out`."""
    recompute(model, [f.read_bytes() for f in files], eval_transform(meta["input_size"]), 256,
              ProcessGroup(0, 1))
    out.parent.mkdir(exist_ok=True)
    save_model(out, model, meta)
    return out


def row(name: str, result: dict) -> str:
    km = result["kmeans"]
    cells = [name, f"{km['acc']:.3f} ± {km['acc_std']:.3f}", f"{km['nmi']:.3f} ± {km['nmi_std']:.3f}",
             f"{result['knn']['top1']:.3f}"]
    if "linear" in result:
        linear = {layer: probe["top1"] for layer, probe in result["linear"].items()}
        best = max(linear, key=linear.get)
        cells.append(f"{linear[best]:.3f} {best}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a cifar_quality.py --work folder")
    parser.add_argument("--images", type=int, default=10240, help="collection images to average over")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the run's training seed")
    parser.add_argument("--random", action="store_true", help="also the random init of --seed")
    parser.add_argument("--linear", action="store_true", help="also the linear probes (slower)")
    args = parser.parse_args()
    saved = Workspace(args.work / "ws").rounds()[-1].model
    model, meta = load_model(saved)
    files = sorted(p for p in (args.work / "src-collection").rglob("*") if p.is_file())
    random.Random(args.sample_seed).shuffle(files)
    files = files[:args.images]
    out = args.work / "bn-recomputed"
    spec = ModelSpec.from_meta(meta)
    models = {"as saved": saved,
              "BN recomputed": recomputed(model, meta, files, out / "model.pt")}
    if args.random:
        init = random_init(spec, args.seed)
        models["random init"] = None
        models["random init, BN recomputed"] = recomputed(init, init.config, files,
                                                          out / "random.pt")
    protocols = ("kmeans", "knn", "linear") if args.linear else ("kmeans", "knn")
    settings = EvalSettings(protocols=protocols, kmeans_l2=True, kmeans_runs=5)
    print(f"{saved}; running statistics over {len(files)} images, sample seed {args.sample_seed}")
    print(f"| model | k-means ACC | k-means NMI | k-NN top-1 |{' best linear |' * args.linear}")
    print("|---|---|---|---|" + "---|" * args.linear)
    for name, path in models.items():
        result = evaluate(args.work / "src-probe", args.work / "src-heldout", spec, settings,
                          model_path=path, seed=args.seed)
        print(row(name, result), flush=True)


if __name__ == "__main__":
    main()
