"""What the report shows, read from a workspace with bounded memory.

Per round: clusters.json, train.json, eval.json (each may be missing). From the label shard
index: cluster sizes (one bincount per shard). From a seeded subset of the shards, read once:
a seeded uniform sample of the images of the largest and smallest clusters and the cluster x
class counts (where the shards carry a true `label`). Nearest
neighbours: a seeded uniform subset of the collection embedded by two models in one pass.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dcpipe.pipeline.workspace import RoundDir, Workspace
from dcpipe.shards.reader import ShardInfo, iter_shard, list_shards

from dcpipe.stages.common import seeds
from dcpipe.stages.common.activations import conv_blocks
from dcpipe.stages.sources.imagesets import ImageSet
from dcpipe.stages.common.images import BadImage, open_rgb
from dcpipe.stages.common.labels import load_labels, read_index
from dcpipe.stages.common.metrics import contingency, nmi
from dcpipe.stages.common.models import denormalize_batch, eval_transform
from dcpipe.stages.common.seeds import Domain
from dcpipe.stages.evaluate.probes import l2_normalise

THUMB_PX = 64


@dataclass
class RoundRecord:
    dir: RoundDir
    clusters: dict | None = None
    train: dict | None = None
    eval: dict | None = None

    @property
    def round(self) -> int:
        return self.dir.index

    @property
    def has_labels(self) -> bool:
        return self.dir.done("cluster")

    @property
    def model_path(self) -> Path | None:
        return self.dir.model if self.dir.done("train") else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def read_rounds(ws: Workspace, rounds=None) -> list[RoundRecord]:
    """The workspace's rounds (all, or those listed) with whatever records they have."""
    return [RoundRecord(d, _read_json(d.clusters_record), _read_json(d.train_record),
                        _read_json(d.eval_record))
            for d in ws.rounds() if rounds is None or d.index in set(rounds)]


def cluster_sizes(labels_dir: Path) -> np.ndarray:
    """Samples per cluster (index = cluster id), counted shard by shard."""
    index = read_index(labels_dir)
    sizes = np.zeros(index["k"], dtype=np.int64)
    for shard in index["shards"]:
        _, labels = load_labels(labels_dir, shard["name"])
        labels = labels[labels >= 0]
        sizes += np.bincount(labels, minlength=len(sizes))[:len(sizes)]
    return sizes


def thumbnail(image: Image.Image, px: int = THUMB_PX) -> np.ndarray:
    image = image.copy()
    image.thumbnail((px, px))
    return np.asarray(image)


@dataclass
class Example:
    image: np.ndarray  # uint8 H x W x 3
    caption: str | None = None  # the true class, when the shard carries one


@dataclass
class ClusterExamples:
    cluster: int
    size: int
    examples: list = field(default_factory=list)


@dataclass
class ClusterSample:
    """What the shards read say about a round's clusters."""
    shown: list  # ClusterExamples of the largest and smallest clusters, largest first
    classes: list  # true class names (the columns of `composition`), [] when unlabelled
    composition: np.ndarray  # (k, classes) samples of cluster c and class j among those read
    shards_read: int
    shards_total: int


def some_shards(names: list, max_shards: int, seed: int) -> list:
    """At most `max_shards` of the names, drawn at random (seeded), in collection order: what
    the report reads stays bounded however large the collection, and a collection sharded class
    by class still shows several classes."""
    if len(names) <= max_shards:
        return list(names)
    picked = seeds.rng(seed, 0, Domain.REPORT_SAMPLE, 0).choice(len(names), max_shards, replace=False)
    return [names[i] for i in sorted(picked)]


def largest_and_smallest(sizes: np.ndarray, available: np.ndarray, count: int) -> list[int]:
    """The `count` clusters shown: half the largest, half the smallest of those with an image
    among the shards read (ties by cluster id), largest first."""
    ranked = [int(c) for c in np.lexsort((np.arange(len(sizes)), -sizes)) if available[c]]
    if len(ranked) <= count:
        return ranked
    return ranked[:(count + 1) // 2] + ranked[len(ranked) - count // 2:]


class Reservoir:
    """A uniform random sample of `size` items from a stream of unknown length (Algorithm R)."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.seen, self.items = size, rng, 0, []

    def offer(self, item) -> None:
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            slot = self.rng.integers(self.seen + 1)
            if slot < self.size:
                self.items[slot] = item
        self.seen += 1


def sample_clusters(shards_dir: Path, labels_dir: Path, sizes: np.ndarray, *, clusters: int,
                    per_cluster: int, seed: int, max_shards: int = 32) -> ClusterSample:
    """Reads at most `max_shards` shards (seeded) once: a seeded uniform sample of the images of
    the largest and smallest clusters (a reservoir per cluster over every member read, so shard
    order, e.g. class by class, does not decide what is shown) and the cluster x class counts."""
    every = [s["name"] for s in read_index(labels_dir)["shards"]]
    names = some_shards(every, max_shards, seed)
    available = np.zeros(len(sizes), dtype=np.int64)
    for name in names:
        labels = load_labels(labels_dir, name)[1]
        available += np.bincount(labels[labels >= 0], minlength=len(sizes))[:len(sizes)]
    reservoirs = {c: Reservoir(per_cluster, seeds.rng(seed, 0, Domain.REPORT_SAMPLE, 3, c))
                  for c in largest_and_smallest(sizes, available, clusters)}
    pairs = []  # (cluster, true class) of every labelled sample read
    tars = {s.name: s for s in list_shards(shards_dir)}
    for name in names:
        if name in tars:
            keys, labels = load_labels(labels_dir, name)
            _read_members(tars[name], dict(zip(keys, labels.tolist())), reservoirs, pairs)
    shown = [ClusterExamples(c, int(sizes[c]), _examples(r.items)) for c, r in reservoirs.items()]
    classes, composition = _composition(pairs, len(sizes))
    return ClusterSample(shown, classes, composition, len(names), len(every))


def _read_members(shard: ShardInfo, cluster_of: dict, reservoirs: dict, pairs: list) -> None:
    for sample in iter_shard(shard.path, shard.sha256, shard.label_field):
        c = cluster_of.get(sample.key, -1)
        if c < 0:
            continue
        label = sample.label
        if label is not None:
            pairs.append((c, str(label)))
        if c in reservoirs and sample.image is not None:
            reservoirs[c].offer((sample.image, label))


def _examples(items: list) -> list:
    """The sampled (image bytes, label) as thumbnails; an undecodable image is left out."""
    examples = []
    for data, label in items:
        try:
            image = thumbnail(open_rgb(data))
        except BadImage:
            continue
        examples.append(Example(image, None if label is None else str(label)))
    return examples


def _composition(pairs: list, k: int) -> tuple[list, np.ndarray]:
    classes = sorted({label for _, label in pairs})
    column = {name: j for j, name in enumerate(classes)}
    cluster_of = np.array([c for c, _ in pairs], dtype=np.int64)
    class_of = np.array([column[label] for _, label in pairs], dtype=np.int64)
    return classes, contingency(cluster_of, class_of, (k, len(classes)))


def to_uint8(images: torch.Tensor, px: int = THUMB_PX) -> np.ndarray:
    """Normalised model inputs (B, 3, H, W) back to uint8 (B, h, w, 3) thumbnails."""
    pixels = denormalize_batch(images).clamp(0, 1)
    if pixels.shape[-1] > px:
        pixels = torch.nn.functional.interpolate(pixels, size=(px, px), mode="area")
    return (pixels * 255).round().byte().permute(0, 2, 3, 1).numpy()


@dataclass
class Neighbours:
    thumbs: np.ndarray  # (pool, h, w, 3) uint8
    captions: list  # true class of each pool image, or None
    queries: list  # pool positions of the query images
    by_model: dict  # model name -> (queries, k) pool positions of the nearest neighbours


def nearest_neighbours(shards_dir: Path, models: dict, *, pool: int, queries: int, k: int,
                       seed: int, workers: int = 0, max_shards: int = 32) -> Neighbours:
    """Neighbours of a few query images among `pool` images drawn uniformly from at most
    `max_shards` shards, by cosine similarity of each model's penultimate features (the query
    itself left out)."""
    input_size = next(iter(models.values())).config["input_size"]
    feats = {name: [] for name in models}
    thumbs, captions = [], []
    names = some_shards([s.name for s in list_shards(shards_dir)], max_shards, seed)
    batches = ImageSet(shards_dir, shard_names=names).batches(
        eval_transform(input_size), max_items=pool, seed=seed, workers=workers)
    for batch in batches:
        if batch.images is None:
            continue
        with torch.no_grad():
            for name, model in models.items():
                feats[name].append(model.embed(batch.images).numpy())
        thumbs.append(to_uint8(batch.images))
        captions += batch.labels
    thumbs = np.concatenate(thumbs)
    chosen = seeds.rng(seed, 0, Domain.REPORT_SAMPLE, 2).choice(
        len(thumbs), min(queries, len(thumbs)), replace=False).tolist()
    by_model = {name: _neighbours(np.concatenate(rows), chosen, k) for name, rows in feats.items()}
    return Neighbours(thumbs, captions, chosen, by_model)


def _neighbours(features: np.ndarray, queries: list, k: int) -> np.ndarray:
    x = l2_normalise(features)
    sims = x[queries] @ x.T
    sims[np.arange(len(queries)), queries] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def first_layer_filters(model) -> np.ndarray:
    """The first learnable conv's filters as images (n, h, w, c) scaled to [0, 1] each.

    Behind the Sobel front-end a filter sees the two gradient images, so it is shown as the
    grey-level filter it amounts to: each input channel's kernel convolved with its Sobel
    kernel, summed (a (k+2) x (k+2) kernel on the grey image)."""
    conv = next(m for m in conv_blocks(model)[0].modules() if isinstance(m, torch.nn.Conv2d))
    weight = conv.weight.detach().double()
    if model.sobel is not None:
        weight = _compose_with_sobel(weight, model.sobel[1].weight.detach().double())
    images = weight.permute(0, 2, 3, 1).numpy()
    low = images.min(axis=(1, 2, 3), keepdims=True)
    high = images.max(axis=(1, 2, 3), keepdims=True)
    return (images - low) / np.maximum(high - low, 1e-12)


def _compose_with_sobel(weight: torch.Tensor, sobel: torch.Tensor) -> torch.Tensor:
    """sum_c conv_full(W[:, c], S_c): (n, 2, k, k) -> (n, 1, k+2, k+2)."""
    n, channels, kh, kw = weight.shape
    composed = torch.zeros(n, 1, kh + 2, kw + 2, dtype=weight.dtype)
    for c in range(channels):
        # conv_full(W, S)[t] = sum_u W[t - u] S[u]: correlate the zero-padded W with flipped S
        padded = torch.nn.functional.pad(weight[:, c:c + 1], (2, 2, 2, 2))
        composed += torch.nn.functional.conv2d(padded, sobel[c:c + 1].flip(-1, -2))
    return composed


def purity(composition: np.ndarray) -> float:
    """Share of the samples in their cluster's most common class."""
    return float(composition.max(axis=1).sum() / composition.sum())


def chance_baselines(composition: np.ndarray, seed: int) -> dict:
    """What the same cluster sizes would score with members drawn at random (seeded), and the
    share of the most common class (the purity of one cluster holding everything)."""
    clusters, classes = np.nonzero(composition)
    counts = composition[clusters, classes]
    cluster_of, class_of = np.repeat(clusters, counts), np.repeat(classes, counts)
    shuffled = seeds.rng(seed, 0, Domain.REPORT_SAMPLE, 4).permutation(class_of)
    return {"purity": purity(composition), "nmi": nmi(cluster_of, class_of),
            "random_purity": purity(contingency(cluster_of, shuffled, composition.shape)),
            "random_nmi": nmi(cluster_of, shuffled),
            "majority_share": float(composition.sum(axis=0).max() / composition.sum())}
