"""Batches of decoded, centre-cropped images streamed from shards (the extract stage's input).

A batch never spans two shards: batch b of a shard holds its rows [b*B, (b+1)*B). With n loader
workers, worker w streams the jobs i with i % n == w (each tar is parsed once). So what goes
into the model is the same whatever the number of workers, ranks or restarts, and features
are reproducible bit for bit.

Every row of a shard comes out exactly once: as an image, or as a failure with its reason
(undecodable image, missing member, or rows lost where another tool's tar breaks off; a shard of
ours that is damaged stops the stage: `iter_shard` verifies it against its manifest digest and
gives a shard's last sample only once the whole tar has been found good, so the last batch of a
damaged shard never leaves the worker and the shard is never committed). Images leave the
workers as centre-cropped uint8 (n, H, W, 3); the consumer normalises the whole batch
(`models.normalize_batch`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from dcpipe.shards.reader import DEFAULT_LABEL_FIELD, ShardCorrupt, ShardReadError, iter_shard

from dcpipe.stages.common.images import BadImage, open_rgb
from dcpipe.stages.common.models import eval_crop
from dcpipe.stages.common.workererrors import handed_on


@dataclass(frozen=True)
class ShardJob:
    position: int  # shard index within the round's list (the store's `shard` value)
    path: str
    count: int  # samples the layout expects
    sha256: str | None = None  # the manifest's digest: the tar is verified as it is read
    label_field: str = DEFAULT_LABEL_FIELD  # where its samples' true labels are


class ShardLayoutError(ShardCorrupt):
    """A shard holds more samples than its manifest entry: the store layout would be wrong."""


@dataclass
class _Batch:
    shard: int
    rows: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    ok: list = field(default_factory=list)
    images: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def add_row(self, row: int, key, label: int, image=None, failure: str | None = None):
        self.rows.append(row)
        self.keys.append(key)
        self.labels.append(label)
        self.ok.append(failure is None)
        if failure is None:
            self.images.append(image)
        else:
            self.failures.append({"row": row, "key": key, "reason": failure})

    def finish(self, input_size: int) -> dict:
        images = (torch.from_numpy(np.stack(self.images)) if self.images
                  else torch.empty(0, input_size, input_size, 3, dtype=torch.uint8))
        return {"shard": self.shard, "rows": np.asarray(self.rows, dtype=np.int64),
                "keys": self.keys, "labels": np.asarray(self.labels, dtype=np.int32),
                "ok": np.asarray(self.ok, dtype=bool), "images": images,
                "failures": self.failures, "warnings": self.warnings}


class ShardBatches(IterableDataset):
    def __init__(self, jobs: list[ShardJob], batch_size: int, input_size: int,
                 label_index: dict[str, int]):
        self.jobs = jobs
        self.batch_size = batch_size
        self.input_size = input_size
        self.label_index = label_index

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        transform = eval_crop(self.input_size)
        for job in self.jobs[worker::n_workers]:
            yield from handed_on(self._shard(job, transform))

    def _decode(self, sample, transform, batch: _Batch, row: int) -> None:
        label = self.label_index.get(sample.label, -1)
        if sample.image is None:
            return batch.add_row(row, sample.key, label, failure=sample.error)
        if sample.error:  # e.g. bad json: the image is still usable
            batch.warnings.append({"row": row, "key": sample.key, "warning": sample.error})
        try:
            image = np.asarray(transform(open_rgb(sample.image, draft_size=2 * self.input_size)))
        except BadImage as exc:
            return batch.add_row(row, sample.key, label, failure=str(exc))
        batch.add_row(row, sample.key, label, image=image)

    def _shard(self, job: ShardJob, transform):
        size, batch = self.batch_size, _Batch(job.position)
        for row, sample, lost in _rows(job):
            if sample is None:
                batch.add_row(row, None, -1, failure=lost)
            else:
                self._decode(sample, transform, batch, row)
            if (row + 1) % size == 0 or row + 1 == job.count:
                yield batch.finish(self.input_size)
                batch = _Batch(job.position)


def _rows(job: ShardJob):
    """(row, sample, None) for each row in the tar, then (row, None, reason) for rows it lost."""
    seen, lost = 0, None
    try:
        for row, sample in enumerate(iter_shard(job.path, job.sha256, job.label_field)):
            if row >= job.count:
                raise ShardLayoutError(f"{job.path} has more than the {job.count} samples "
                                       "its manifest lists; was it rewritten?")
            seen = row + 1
            yield row, sample, None
    except ShardReadError as exc:
        lost = f"shard unreadable from here: {exc}"
    lost = lost or f"shard ended after {seen} of {job.count} samples"
    for row in range(seen, job.count):
        yield row, None, lost
