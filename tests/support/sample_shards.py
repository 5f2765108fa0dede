"""Small synthetic shard collections for tests and benchmarks (real tars via ShardWriter).

(Not named collections.py: tests/ is on sys.path under pytest and would shadow the stdlib.)
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dcpipe.shards.manifest import add_entry
from dcpipe.shards.naming import make_key
from dcpipe.shards.reader import list_shards
from dcpipe.shards.writer import ShardWriter

CLASSES = ("cat", "dog", "panda")


def synthetic_jpeg(rng: np.random.Generator, class_id: int, size: int = 32) -> bytes:
    """A noisy image whose colour and stripe direction depend on its class."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    stripes = np.sin((xx if class_id % 2 else yy) * (6 + 3 * class_id) * np.pi)
    base = np.array([(70 * class_id) % 256, 128, 255 - (50 * class_id) % 256], dtype=float)
    pixels = base + 60 * stripes[..., None] + rng.normal(0, 25, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_collection(shards_dir, n_shards: int, per_shard, *, size: int = 32,
                    classes=CLASSES, seed: int = 0, distinct: int | None = None):
    """Write `n_shards` shards (per_shard: an int or one count per shard) and their manifest.

    Sample metadata carries `label` (class name) and `row`. `distinct` cycles that many
    pre-encoded images instead of encoding one per sample (fast large collections).
    Returns `list_shards(shards_dir)`.
    """
    counts = per_shard if isinstance(per_shard, (list, tuple)) else [per_shard] * n_shards
    rng = np.random.default_rng(seed)
    pool = [synthetic_jpeg(rng, i % len(classes), size) for i in range(distinct or 0)]
    sample = 0
    for shard, count in enumerate(counts):
        writer = ShardWriter(shards_dir, shard)
        seen = set()
        for row in range(count):
            if pool:
                class_id = sample % len(pool) % len(classes)
                jpg = pool[sample % len(pool)]
            else:
                class_id = int(rng.integers(len(classes)))
                jpg = synthetic_jpeg(rng, class_id, size)
            writer.add(make_key(shard, row), jpg, {"label": classes[class_id], "row": row})
            seen.add(classes[class_id])
            sample += 1
        entry = writer.commit({"rows": count}, entry_extra={"classes": sorted(seen)})
        add_entry(shards_dir, entry)
    return list_shards(shards_dir)
