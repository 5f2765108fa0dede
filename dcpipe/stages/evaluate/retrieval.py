"""Instance retrieval: R-MAC descriptors over a conv feature map and mean average precision.

R-MAC (Tolias, Sicre & Jegou, ICLR 2016), the pooling of the paper's retrieval protocol: square
regions at `levels` scales, max-pooled, each region vector L2-normalised, summed and
L2-normalised again. Region side at level l is 2 min(H, W) / (l + 1) (level 1: min(H, W)); along
each axis the fewest positions such that neighbouring regions overlap by at least 40%, which
gives 1, 2x2 and 3x3 regions at levels 1-3 on a square map. The paper's learned PCA-whitening
of region vectors is left out: it needs an independent landmark set we do not have.

`retrieval_map` is the protocol on image sets: a database image is relevant to a query when it
has the query's label (instance id).
"""

import math

import numpy as np
import torch
from torchvision import transforms

from dcpipe.stages.sources.imagesets import ImageSet
from dcpipe.stages.common.models import CENTER_CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD

MIN_OVERLAP = 0.4


def _positions(extent: int, side: int) -> list[int]:
    if side >= extent:
        return [0]
    count = math.ceil((extent - side) / ((1 - MIN_OVERLAP) * side)) + 1
    return [round(i * (extent - side) / (count - 1)) for i in range(count)]


def rmac_regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int]]:
    """(top, left, side) of every R-MAC region of a height x width map."""
    regions = []
    for level in range(1, levels + 1):
        side = max(1, math.floor(2 * min(height, width) / (level + 1)))
        regions += [(top, left, side) for top in _positions(height, side)
                    for left in _positions(width, side)]
    return list(dict.fromkeys(regions))  # tiny maps repeat regions across levels


def rmac(fmap: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """(B, C, H, W) feature maps -> (B, C) L2-normalised R-MAC descriptors."""
    total = torch.zeros(fmap.shape[:2], dtype=fmap.dtype)
    for top, left, side in rmac_regions(fmap.shape[2], fmap.shape[3], levels):
        region = fmap[:, :, top:top + side, left:left + side].amax(dim=(2, 3))
        total += torch.nn.functional.normalize(region, dim=1)
    return torch.nn.functional.normalize(total, dim=1)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Non-interpolated AP of one ranking: mean of the precision at each relevant item's rank."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = np.asarray(relevant, dtype=bool)[order]
    if not hits.any():
        return 0.0
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def mean_average_precision(query_desc, query_labels, db_desc, db_labels) -> float:
    """mAP of cosine-similarity rankings; a database item is relevant when it shows the query's
    instance (same label). Queries with no relevant item in the database are left out."""
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    sims = np.asarray(query_desc, dtype=np.float64) @ np.asarray(db_desc, dtype=np.float64).T
    aps = [average_precision(sims[i], db_labels == query_labels[i])
           for i in range(len(query_labels)) if np.any(db_labels == query_labels[i])]
    return float(np.mean(aps)) if aps else 0.0


def retrieval_descriptors(model, src, workers) -> tuple[np.ndarray, list]:
    """R-MAC of the last conv layer for each labelled image, uncropped (whole image, shorter
    side scaled as the central crop's context), one image at a time as sizes differ."""
    side = round(model.config["input_size"] / CENTER_CROP_RATIO)
    transform = transforms.Compose([transforms.Resize(side), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    descriptors, labels = [], []
    for batch in ImageSet(src).batches(transform, batch_size=1, workers=workers):
        if batch.images is not None and batch.labels[0] is not None:
            with torch.no_grad():
                descriptors.append(rmac(model.conv_activations(batch.images)[-1]).numpy())
            labels.append(batch.labels[0])
    return (np.concatenate(descriptors) if descriptors else np.zeros((0, 0), np.float32)), labels


def retrieval_map(model, query_src, database_src, *, workers=2) -> dict:
    """mAP of a model's R-MAC descriptors: queries ranked against the database."""
    queries, query_labels = retrieval_descriptors(model, query_src, workers)
    database, db_labels = retrieval_descriptors(model, database_src, workers)
    return {"map": mean_average_precision(queries, query_labels, database, db_labels),
            "queries": len(queries), "database": len(database)}
