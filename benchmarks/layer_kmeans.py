"""Held-out k-means on each layer of saved models: which feature of a trained net splits the
classes best (eval's k-means uses the clustering feature only: v1's penultimate layer, v2's
projection).

For each model, the labelled images of an ImageNet-style folder pass once through it; the conv
layers' activations are average-pooled to the linear probes' budget of dims, as `dcpipe eval`
pools them; k-means (k = the number of classes) runs on each layer's L2-normalised rows, mean and
spread over `--kmeans-runs` seeds.

    python benchmarks/layer_kmeans.py --images /tmp/cq-mix-s0/src-heldout \\
        /tmp/cq-mix-s0/ws/rounds/0025/model.pt /tmp/cq-wd-s0/ws/rounds/0025/model.pt
"""
import argparse
from pathlib import Path

import numpy as np

from dcpipe.stages.common.activations import PENULTIMATE, Tap
from dcpipe.stages.evaluate import probes
from dcpipe.stages.evaluate.stage import ClassIndex, SetStats, labelled_features, model_for_eval


def layer_rows(model_path: Path, images: Path, layers: list[str]) -> tuple[dict, np.ndarray]:
    """{layer: rows} of every labelled image of `images`, and their labels."""
    net, _ = model_for_eval(model_path)
    tap, classes = Tap(net, layers), ClassIndex()
    rows, labels = {}, []
    for feats, batch_labels in labelled_features(images, tap, classes, SetStats(images),
                                                 max_items=10**9, seed=0, batch_size=256,
                                                 workers=2, progress=False):
        for name, values in feats.items():
            rows.setdefault(name, []).append(values)
        labels.append(batch_labels)
    return {name: np.concatenate(parts) for name, parts in rows.items()}, np.concatenate(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", type=Path, nargs="+", help="model.pt files")
    parser.add_argument("--images", type=Path, required=True, help="labelled held-out images")
    parser.add_argument("--layers", default=f"conv3,conv4,conv5,{PENULTIMATE}")
    parser.add_argument("--kmeans-runs", type=int, default=5)
    args = parser.parse_args()
    print("| model | layer | dims | k-means ACC | k-means NMI |\n|---|---|---|---|---|")
    for path in args.models:
        rows, labels = layer_rows(path, args.images, args.layers.split(","))
        for name, x in rows.items():
            km = probes.kmeans_quality(x, labels, k=len(np.unique(labels)), normalise=True,
                                       runs=args.kmeans_runs)
            print(f"| {path} | {name} | {x.shape[1]} | {km['acc']:.3f} ± {km['acc_std']:.3f} | "
                  f"{km['nmi']:.3f} ± {km['nmi_std']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
