"""`dcpipe embed`: a model's penultimate features of any image set, for other tools.

Output by the name of `out_path`:
- `*.npy`: float32 (N, D), one row per readable image in source order, and beside it
  `<stem>.keys.json`: {"keys": [...] (row i's key), "failed": [[key, reason], ...], "model": ...};
- anything else: a zarr v3 store (a folder) with the float32 array `features` (N, D), chunked by
  rows, and `keys.json` (same content) inside it; its attributes repeat the model description.
Features are streamed to disk batch by batch (memory: one batch). The result appears complete
or not at all: it is written under a temporary name and renamed.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import zarr

from dcpipe.shards.atomic import atomic_write_json, fsync_dir, publish

from dcpipe.stages.common.models import eval_transform
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.evaluate.settings import EvalSettings
from dcpipe.stages.evaluate.stage import counted, model_for_eval
from dcpipe.stages.sources.imagesets import ImageSet

ZARR_CHUNK_ROWS = 4096


def embed(src, out_path, model: ModelSpec = ModelSpec(), *, model_path=None, seed: int = 0,
          batch_size: int = EvalSettings.batch_size, workers: int = EvalSettings.workers,
          progress: bool = False) -> dict:
    """Writes the features of `src` to `out_path` with a round's model (`model_path`) or the
    random init of `model` (`progress`: a bar of the images read); returns {rows, dim, failed,
    path, model}."""
    out_path = Path(out_path)
    net, model_info = model_for_eval(model_path, model, seed)
    writer_cls = NpyWriter if out_path.suffix == ".npy" else ZarrWriter
    writer = writer_cls(out_path, net.feature_dim)
    keys, failed = [], []
    transform = eval_transform(net.config["input_size"])
    try:
        images = ImageSet(src)
        batches = images.batches(transform, batch_size=batch_size, workers=workers)
        for batch in counted(images, batches, "embed", progress):
            failed += [list(f) for f in batch.failures]
            if batch.images is not None:
                writer.append(_features(net, batch.images))
                keys += batch.keys
        summary = {"keys": keys, "failed": failed, "model": model_info}
        writer.finish(summary)
    except BaseException:
        writer.discard()
        raise
    return {"path": str(out_path), "rows": len(keys), "dim": net.feature_dim,
            "failed": len(failed), "model": model_info}


def _features(model, images) -> np.ndarray:
    with torch.no_grad():
        return model.embed(images).numpy().astype(np.float32)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class NpyWriter:
    """Rows go to a raw temp file; `finish` prefixes the .npy header once N is known."""

    def __init__(self, path: Path, dim: int):
        self.path, self.dim, self.rows = path, dim, 0
        self.raw_path = _temp_name(path.with_suffix(".raw"))
        self.npy_tmp = _temp_name(path)
        self.raw = open(self.raw_path, "wb")

    def append(self, rows: np.ndarray) -> None:
        self.raw.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        self.rows += len(rows)

    def finish(self, summary: dict) -> None:
        self.raw.close()
        header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim)}
        with open(self.npy_tmp, "wb") as out, open(self.raw_path, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, 1 << 22)
        self.raw_path.unlink()
        atomic_write_json(self.path.with_name(self.path.stem + ".keys.json"), summary)
        publish(self.npy_tmp, self.path)

    def discard(self) -> None:
        self.raw.close()
        for path in (self.raw_path, self.npy_tmp):
            path.unlink(missing_ok=True)


class ZarrWriter:
    """Appends rows to a zarr array in a temporary store folder, renamed when complete."""

    def __init__(self, path: Path, dim: int):
        self.path, self.tmp = path, _temp_name(path)
        shutil.rmtree(self.tmp, ignore_errors=True)
        group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self.array = group.create_array("features", shape=(0, dim), dtype="float32",
                                        chunks=(ZARR_CHUNK_ROWS, dim))
        self.pending, self.pending_rows = [], 0

    def append(self, rows: np.ndarray) -> None:
        # whole chunks at a time: appending a batch at a time would rewrite the last chunk
        self.pending.append(rows)
        self.pending_rows += len(rows)
        if self.pending_rows >= ZARR_CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.array.append(np.concatenate(self.pending))
            self.pending, self.pending_rows = [], 0

    def finish(self, summary: dict) -> None:
        self._flush()
        zarr.open_group(str(self.tmp), mode="r+").attrs.update(
            {"model": summary["model"], "rows": len(summary["keys"]), "keys": "keys.json"})
        (self.tmp / "keys.json").write_text(json.dumps(summary))
        _fsync_tree(self.tmp)
        old = _temp_name(self.path.with_name(self.path.name + ".old"))
        if self.path.exists():
            os.replace(self.path, old)  # a folder cannot be renamed over a non-empty one
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(folder))
