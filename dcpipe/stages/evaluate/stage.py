"""`dcpipe eval`: how good are a round's features? The paper's protocols on labelled images.

- linear: a linear classifier on the frozen activations of each conv layer (average-pooled to a
  budget of dims, stages/activations.py) and on the penultimate features: a streamed ridge
  classifier (stages/probes.py) fitted in one pass over the training images;
- knn: weighted k-NN (cosine, k = 20) on the penultimate features;
- kmeans: k-means with k = number of test classes on the test images' penultimate features,
  PCA-whitened and L2-normalised as the method does: NMI, adjusted Rand, Hungarian accuracy;
- retrieval: mAP of R-MAC descriptors of the last conv layer, queries against a database, an
  image being relevant to a query when it has the same label (instance id).
Labels are used here only. Memory: the probes' d x d statistics, the training penultimate
features for k-NN (at most `max_train` rows) and the test ones for k-means (`max_test` rows).
"""

import time

import numpy as np
import torch
from tqdm import tqdm

from dcpipe.errors import DcpipeError, SettingsError
from dcpipe.stages.common.activations import PENULTIMATE, Tap
from dcpipe.stages.common.models import eval_transform, load_model, random_init
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.evaluate import probes
from dcpipe.stages.evaluate.retrieval import retrieval_map
from dcpipe.stages.evaluate.settings import EvalSettings
from dcpipe.stages.evaluate.table import model_label
from dcpipe.stages.sources.imagesets import ImageSet

MAX_REPORTED_FAILURES = 20


def model_for_eval(model_path=None, spec: ModelSpec = ModelSpec(), seed: int = 0):
    """A round's model (its spec from the checkpoint), or with no path the random init of `spec`
    for the workspace `seed`, the network round 0 started from: the baseline."""
    if model_path is not None:
        model, meta = load_model(model_path)
        info = {k: meta.get(k) for k in ("arch", "sobel", "input_size", "width", "round")}
        return model, {"path": str(model_path), "random_init": False, **info}
    model = random_init(spec, seed)
    info = {k: model.config[k] for k in ("arch", "sobel", "input_size", "width")}
    return model.eval(), {"path": None, "random_init": True, "seed": seed, **info}


class ClassIndex:
    """Class names -> 0, 1, ... in order of first appearance (training classes first)."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def __call__(self, names) -> np.ndarray:
        return np.array([-1 if n is None else self.ids.setdefault(n, len(self.ids))
                         for n in names], dtype=np.int64)


class SetStats:
    """What a pass over an image set used and skipped (failures: the first few, with reasons)."""

    def __init__(self, src):
        self.info = {"source": str(src), "images": 0, "unlabelled": 0, "failed": 0,
                     "failures": []}

    def add(self, batch, labels):
        self.info["images"] += int(np.sum(labels >= 0))
        self.info["unlabelled"] += int(np.sum(labels < 0))
        self.info["failed"] += len(batch.failures)
        room = max(MAX_REPORTED_FAILURES - len(self.info["failures"]), 0)
        self.info["failures"] += [list(f) for f in batch.failures[:room]]


def counted(images: ImageSet, batches, desc: str, progress: bool, max_items=None):
    """The batches, with a progress bar of the images read (none unless `progress`)."""
    total = min(len(images), max_items or len(images))
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            bar.update(len(batch.keys) + len(batch.failures))
            yield batch


def labelled_features(src, tap, classes, stats, *, max_items, seed, batch_size, workers,
                      progress):
    """(features by layer, labels) of each batch of the set's labelled, decodable images."""
    transform = eval_transform(tap.model.config["input_size"])
    images = ImageSet(src)
    batches = images.batches(transform, batch_size=batch_size, workers=workers,
                             max_items=max_items, seed=seed)
    for batch in counted(images, batches, f"eval {src}", progress, max_items):
        labels = classes(batch.labels)
        stats.add(batch, labels)
        known = labels >= 0
        if known.any():
            yield tap(batch.images[torch.from_numpy(known)]), labels[known]


def _rows(parts) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def fit_pass(src, tap, classes, protocols, knn_k, io):
    """Fits a probe per layer and keeps the penultimate rows for k-NN."""
    stats = SetStats(src)
    ridge, knn_rows, knn_labels = {}, [], []
    for feats, labels in labelled_features(src, tap, classes, stats, **io):
        if "linear" in protocols:
            for name, rows in feats.items():
                ridge.setdefault(name, probes.RidgeProbe(rows.shape[1])).add(rows, labels)
        if "knn" in protocols:
            knn_rows.append(feats[PENULTIMATE])
            knn_labels.append(labels)
    if not stats.info["images"]:
        raise DcpipeError(f"no labelled, readable image in the training set {src}")
    knn = None
    if knn_rows:
        knn = probes.KnnClassifier(_rows(knn_rows), np.concatenate(knn_labels),
                                   k=knn_k, temperature=probes.KNN_TEMPERATURE)
    return stats.info, {name: p.fit() for name, p in ridge.items()}, knn


def score_pass(src, tap, classes, fitted, knn, keep_rows, io):
    """Correct predictions per layer and for k-NN; the penultimate rows if k-means needs them."""
    stats = SetStats(src)
    correct = dict.fromkeys([*fitted, *(["knn"] if knn else [])], 0)
    kept, kept_labels = [], []
    for feats, labels in labelled_features(src, tap, classes, stats, **io):
        for name, probe in fitted.items():
            correct[name] += int(np.sum(probe.predict(feats[name]) == labels))
        if knn:
            correct["knn"] += int(np.sum(knn.predict(feats[PENULTIMATE]) == labels))
        if keep_rows:
            kept.append(feats[PENULTIMATE])
            kept_labels.append(labels)
    if not stats.info["images"]:
        raise DcpipeError(f"no labelled, readable image in the test set {src}")
    labels = np.concatenate(kept_labels) if kept_labels else np.zeros(0, np.int64)
    return stats.info, correct, (_rows(kept), labels)


def check_sources(protocols, train_src, test_src, query_src, database_src) -> None:
    if "retrieval" in protocols and (query_src is None or database_src is None):
        raise SettingsError("the retrieval protocol needs query and database image lists")
    needs_train = {"linear", "knn"} & set(protocols)
    if needs_train and train_src is None:
        raise SettingsError(f"{'/'.join(sorted(needs_train))} needs a training set (--train)")
    if set(protocols) - {"retrieval"} and test_src is None:
        raise SettingsError("the classification protocols need a test set (--test)")


def evaluate(train_src, test_src, model: ModelSpec = ModelSpec(),
             settings: EvalSettings = EvalSettings(), *, model_path=None, seed: int = 0,
             query_src=None, database_src=None, progress: bool = False) -> dict:
    """Evaluates a model (`model_path`, its spec from the checkpoint) or, with no path, the
    random init of `model` for the workspace `seed` (the baseline). `settings.sample_seed`
    draws the subsets and seeds the k-means; `settings.kmeans_pca` = d runs k-means after
    PCA-whitening to d dims (the method's own preprocessing) instead of on the plain features.
    `progress`: a bar per pass over an image set. Returns plain JSON types."""
    s = settings
    check_sources(s.protocols, train_src, test_src, query_src, database_src)
    net, model_info = model_for_eval(model_path, model, seed)
    result = {"model": model_info, "protocols": list(s.protocols), "seconds": {}}
    started = time.monotonic()
    if set(s.protocols) - {"retrieval"}:
        tap = Tap(net, s.layers if "linear" in s.protocols else [PENULTIMATE],
                  probe_dims=s.probe_dims or None)
        io = {"seed": s.sample_seed, "batch_size": s.batch_size, "workers": s.workers,
              "progress": progress}
        result.update(_classification(train_src, test_src, tap, s, io))
        result["seconds"]["classification"] = round(time.monotonic() - started, 2)
    if "retrieval" in s.protocols:
        begun = time.monotonic()
        result["retrieval"] = retrieval_map(net, query_src, database_src, workers=s.workers)
        result["seconds"]["retrieval"] = round(time.monotonic() - begun, 2)
    return result


def compare_random(train_src, test_src, settings: EvalSettings = EvalSettings(), *,
                   model_path, seed: int = 0, progress: bool = False, **image_sets) -> dict:
    """The model and a random init of the same architecture, evaluated on the same images:
    {trained label: result, random label: result} (the shape the report reads from eval.json).
    `image_sets`: query_src and database_src for the retrieval protocol."""
    trained = evaluate(train_src, test_src, settings=settings, model_path=model_path,
                       progress=progress, **image_sets)
    spec = ModelSpec.from_meta(trained["model"])
    baseline = evaluate(train_src, test_src, spec, settings, seed=seed, progress=progress,
                        **image_sets)
    return {model_label(trained): trained, model_label(baseline): baseline}


def _classification(train_src, test_src, tap, settings: EvalSettings, io):
    protocols, knn_k = settings.protocols, settings.knn_k
    classes, max_train, max_test = ClassIndex(), settings.max_train, settings.max_test
    out, fitted, knn = {}, {}, None
    if {"linear", "knn"} & set(protocols):
        out["train"], fitted, knn = fit_pass(train_src, tap, classes, protocols, knn_k,
                                               {**io, "max_items": max_train})
    out["test"], correct, (rows, labels) = score_pass(
        test_src, tap, classes, fitted, knn, "kmeans" in protocols,
        {**io, "max_items": max_test})
    images = out["test"]["images"]
    if fitted:
        dims = tap.dims()
        out["linear"] = {name: {"top1": correct[name] / images, "dims": dims[name],
                                "pool": tap.sides.get(name), "ridge_lambda": probe.lam}
                         for name, probe in fitted.items()}
    if knn:
        out["knn"] = {"top1": correct["knn"] / images, "k": knn.k,
                      "temperature": knn.temperature}
    if "kmeans" in protocols:
        out["kmeans"] = probes.kmeans_quality(rows, labels, k=len(np.unique(labels)),
                                              seed=io["seed"], pca_dim=settings.kmeans_pca or None,
                                              normalise=settings.kmeans_l2,
                                              runs=settings.kmeans_runs)
    out["classes"] = len(classes.ids)
    return out
