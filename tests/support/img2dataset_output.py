"""A folder as img2dataset writes it (output_format webdataset), built for real without it.

Per shard: `00000.tar` with members `<key>.jpg`, `<key>.txt` (caption), `<key>.json` (url,
key, status, width, height, caption, ... and the extra columns such as `label`), in that order
per sample, keys being the 5-digit shard id and a 4-digit index as img2dataset makes them;
beside it `00000.parquet` (one row per input, failures included) and `00000_stats.json`.
`cls=True` adds a `<key>.cls` member holding the class index as text (WebDataset's convention
for a class), the `--label-field cls` variant.
"""
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from support.sample_shards import CLASSES, synthetic_jpeg

SIZE = 32


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), time.time(), 0o444
    info.uname = info.gname = "bigdata"  # what webdataset's TarWriter puts there
    tar.addfile(info, io.BytesIO(data))


def _meta(shard: int, i: int, class_id: int) -> tuple[str, dict]:
    key = f"{shard:05d}{i:04d}"
    meta = {"url": f"http://example.com/{key}.jpg", "key": key, "status": "success",
            "error_message": None, "width": SIZE, "height": SIZE, "original_width": SIZE,
            "original_height": SIZE, "caption": f"a photo of a {CLASSES[class_id]}",
            "label": CLASSES[class_id], "exif": "{}", "sha256": None}
    return key, meta


def write_shard(folder: Path, shard: int, per_shard: int, rng, *, cls: bool = False) -> Path:
    """One img2dataset shard (tar, parquet, stats) of `per_shard` samples; returns the tar."""
    rows = []
    tar_path = folder / f"{shard:05d}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(per_shard):
            class_id = int(rng.integers(len(CLASSES)))
            key, meta = _meta(shard, i, class_id)
            _member(tar, f"{key}.jpg", synthetic_jpeg(rng, class_id, SIZE))
            _member(tar, f"{key}.txt", meta["caption"].encode())
            _member(tar, f"{key}.json", json.dumps(meta).encode())
            if cls:
                _member(tar, f"{key}.cls", str(class_id).encode())
            rows.append(meta)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")
    stats = {"count": per_shard, "successes": per_shard, "failed_to_download": 0,
             "failed_to_resize": 0, "status_dict": {"success": per_shard}}
    (folder / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
    return tar_path


def img2dataset_folder(folder, n_shards: int = 2, per_shard: int = 12, *, cls: bool = False,
                       seed: int = 0, first: int = 0) -> list[Path]:
    """Shards first..first+n_shards-1 of an img2dataset output folder; returns their tars."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + first)
    return [write_shard(folder, first + s, per_shard, rng, cls=cls) for s in range(n_shards)]
