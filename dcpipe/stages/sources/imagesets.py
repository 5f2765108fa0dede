"""Image sets for evaluation and embedding: an image folder, a table of sources, or shards.

`ImageSet(src)` is one of
- a shard folder (a `manifest.jsonl` or `*.tar` files in it: ours or img2dataset's), the class
  being read with each shard's label field (`ShardInfo.label_field`: the JSON's `label` unless
  the shard was adopted with another), a key being `<shard name>/<sample key>` (sample keys
  are unique only within a shard);
- an image folder in ImageNet layout (`root/<class>/<file>`), the class being the folder, a key
  being the file's path relative to the folder (wherever the command runs from);
- a table (CSV / TSV / JSONL / Parquet / text, as the shard stage reads them) of sources, the
  class being the `label` column.
Classes are used for measuring only. `batches()` yields `Batch`es in source order whatever the
number of DataLoader workers: every worker walks the rows, worker w reads and decodes batches
w, w + n, ..., and the loader takes them in turn. Rows that cannot be read come back as failures
(key, reason), never silently dropped. A seeded uniform subset of at most `max_items` rows is
drawn by position, so a class-ordered source (a folder, class by class) gives each class its share.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dcpipe.shards.manifest import has_manifest
from dcpipe.shards.reader import ShardReadError, iter_shard, list_shards, tar_files

from dcpipe.stages.sources.fetch import FetchError, fetch
from dcpipe.stages.common import seeds
from dcpipe.stages.common.images import BadImage, open_rgb
from dcpipe.stages.common.seeds import Domain
from dcpipe.stages.common.workererrors import handed_on, raised
from dcpipe.stages.sources.tables import iter_rows

LABEL_FIELD = "label"  # a table's class column


@dataclass
class Record:
    """One row of an image set, before decoding."""

    position: int
    key: str
    label: str | None
    data: bytes | None = None
    error: str | None = None
    source: str | None = None  # where a table row's image is read from

    def load(self) -> None:
        if self.data is None and self.error is None:
            try:
                self.data = fetch(self.source)
            except FetchError as exc:
                self.error = str(exc)


@dataclass
class Batch:
    images: torch.Tensor | None  # decoded rows only
    keys: list = field(default_factory=list)
    labels: list = field(default_factory=list)  # class names (None where unknown)
    failures: list = field(default_factory=list)  # (key, reason) of rows that could not be used


def is_shard_dir(path: Path) -> bool:
    return path.is_dir() and (has_manifest(path) or bool(tar_files(path)))


class ImageSet:
    def __init__(self, src, *, label_field: str | None = None, shard_names=None):
        """`shard_names`: of a shard folder, only these shards. `label_field`: where the class
        is (default: a table's `label` column, each shard's own label field)."""
        self.src = Path(src)
        if not self.src.exists():
            raise FileNotFoundError(f"image set {src} does not exist")
        self.label_field = label_field
        self.shards = list_shards(self.src) if is_shard_dir(self.src) else None
        if shard_names is not None and self.shards is not None:
            self.shards = [s for s in self.shards if s.name in set(shard_names)]

    def __len__(self) -> int:
        if self.shards is not None:
            return sum(s.n_samples for s in self.shards)
        return sum(1 for _ in iter_rows(self.src))

    def records(self) -> Iterator[Record]:
        """Rows in source order; a table's images are read later, by `load`."""
        if self.shards is None:
            yield from self._row_records()
            return
        offset = 0
        for shard in self.shards:
            yield from self._shard_records(shard, offset)
            offset += shard.n_samples

    def _row_records(self) -> Iterator[Record]:
        for row in iter_rows(self.src):
            label = row.label if row.label is not None else row.meta.get(
                self.label_field or LABEL_FIELD)
            yield Record(row.row, row.key or row.recorded_source or f"row{row.row}",
                         None if label is None else str(label), source=row.source,
                         error=row.reject)

    def _shard_records(self, shard, offset: int) -> Iterator[Record]:
        row = -1
        try:
            samples = iter_shard(shard.path, shard.sha256, self.label_field or shard.label_field)
            for row, sample in enumerate(samples):
                yield Record(offset + row, f"{shard.name}/{sample.key}", sample.label,
                             sample.image, sample.error)
        except ShardReadError as exc:
            # the rest of another tool's broken shard is unreadable: report its remaining rows
            # as failed (a damaged shard of ours raises ShardCorrupt: see iter_shard)
            for lost in range(row + 1, shard.n_samples):
                yield Record(offset + lost, f"{shard.name}/{lost}", None, error=str(exc))

    def batches(self, transform, *, batch_size: int = 128, workers: int = 0,
                max_items: int | None = None, seed: int = 0) -> Iterator[Batch]:
        chosen = choose_positions(len(self), max_items, seed)
        dataset = _Decoded(self, transform, chosen, batch_size)
        yield from raised(DataLoader(dataset, batch_size=None, num_workers=workers,
                                     collate_fn=_as_is))


def choose_positions(n: int, max_items: int | None, seed: int) -> np.ndarray | None:
    """A seeded uniform subset of row positions as a boolean mask; None = every row."""
    if max_items is None or max_items >= n:
        return None
    mask = np.zeros(n, dtype=bool)
    mask[seeds.rng(seed, 0, Domain.EVAL_SUBSET).choice(n, max_items, replace=False)] = True
    return mask


class _Decoded(IterableDataset):
    """Batches of decoded, transformed rows; worker w of n makes batches w, w + n, ..."""

    def __init__(self, image_set: ImageSet, transform, chosen: np.ndarray | None,
                 batch_size: int):
        self.image_set, self.transform, self.chosen = image_set, transform, chosen
        self.batch_size = batch_size

    def _chosen_records(self) -> Iterator[Record]:
        for record in self.image_set.records():
            if self.chosen is None or self.chosen[record.position]:
                yield record

    def __iter__(self):
        return handed_on(self._batches())

    def _batches(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        pending, index = [], 0
        for record in self._chosen_records():
            pending.append(record)
            if len(pending) == self.batch_size:
                if index % workers == worker:
                    yield self._decode(pending)
                pending, index = [], index + 1
        if pending and index % workers == worker:
            yield self._decode(pending)

    def _decode(self, records) -> Batch:
        batch, images = Batch(None), []
        for record in records:
            record.load()
            if record.error is None:
                try:
                    images.append(self.transform(open_rgb(record.data)))
                except BadImage as exc:
                    record.error = str(exc)
            if record.error is None:
                batch.keys.append(record.key)
                batch.labels.append(record.label)
            else:
                batch.failures.append((record.key, record.error))
        batch.images = torch.stack(images) if images else None
        return batch


def _as_is(batch):
    return batch
