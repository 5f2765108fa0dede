"""Test collections with planted labels: every image is one flat colour that encodes its label.

So any sample that comes out of the training data path can be checked against its own pixels:
`label_of_pixels(tensor) == label` holds only if the label was joined to the right sample.
Label -1 (no label) is white. Used by test_sampler, test_trainbatches and test_train.
"""
import io
import itertools

import numpy as np
import torch
from PIL import Image

from dcpipe.shards.manifest import add_entry
from dcpipe.shards.naming import make_key
from dcpipe.shards.reader import list_shards
from dcpipe.shards.writer import ShardWriter
from dcpipe.stages.common.labels import write_labels
from dcpipe.stages.common.models import denormalize_batch

LEVELS = (32, 96, 160, 224)
PALETTE = np.array(list(itertools.product(LEVELS, repeat=3)), dtype=np.float64)  # 64 colours
WHITE = (255, 255, 255)


def colour(label: int) -> tuple:
    return WHITE if label < 0 else tuple(int(v) for v in PALETTE[label])


def jpeg(rgb: tuple, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def make_collection(root, labels_per_shard: list[np.ndarray], k: int, image_size: int = 8):
    """Shards 0..S-1 under root/shards whose row i has colour(labels[i]); labels in root/labels.

    Returns (list_shards(...), labels_dir).
    """
    shards_dir = root / "shards"
    images = {}
    published = []
    for index, labels in enumerate(labels_per_shard):
        writer = ShardWriter(shards_dir, index)
        keys = [make_key(index, row) for row in range(len(labels))]
        for key, label in zip(keys, labels.tolist()):
            if label not in images:
                images[label] = jpeg(colour(label), image_size)
            writer.add(key, images[label], {"label": label})
        add_entry(shards_dir, writer.commit({"rows": len(labels)}))
        published.append((writer.name, keys, np.asarray(labels, np.int32)))
    labels_dir = write_labels(root, published, {"k": k, "round": 0})
    return list_shards(shards_dir), labels_dir


def label_of_pixels(image: torch.Tensor) -> int:
    """The planted label of a normalised image tensor [3, H, W] (-1 for white)."""
    rgb = denormalize_batch(image[None].double())[0].mean(dim=(1, 2)).numpy() * 255
    if (rgb > 240).all():
        return -1
    return int(np.argmin(((PALETTE - rgb) ** 2).sum(axis=1)))


def skewed_labels(sizes: list[int], n_shards: int, seed: int = 0, unlabelled: int = 0):
    """Label arrays for n_shards shards holding cluster c `sizes[c]` times (plus `unlabelled`
    -1 rows), in a random order, split into shards of near-equal size."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(np.arange(len(sizes)), sizes), np.full(unlabelled, -1)])
    return np.array_split(rng.permutation(labels).astype(np.int32), n_shards)
