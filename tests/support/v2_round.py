"""A small DeepCluster-v2 round the train tests share: a planted collection of 4 clusters, two
heads of labels and their unit centroids, and the round run in this process or launched."""
import numpy as np

from dcpipe.stages.common.labels import load_labels, write_labels
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.train import TrainSettings
from dcpipe.stages.train.stage import train
from support.labelled_shards import make_collection
from support.settings import pop_settings
from support.train_kill import launch

K, DIM = 4, 16
OPTIONS = {"sobel": False, "width": 4, "projection": DIM, "input_size": 32,
           "method": "deepcluster-v2", "batch_size": 16, "small_crops": 2, "workers": 1,
           "lr": 0.1, "lr_schedule": "cosine", "warmup_rounds": 0.5, "total_rounds": 3,
           "weight_decay": 1e-6, "checkpoint_every": 3, "loss_every": 2, "seed": 1,
           "round_index": 1, "progress": False}


def make_heads(root, head1_k: int = K):
    """(shards, labels_dir, [head 1's labels_dir], [centroid files]) of 150 rows in 3 shards;
    head 1 has `head1_k` clusters."""
    rng = np.random.default_rng(0)
    shards, labels_dir = make_collection(root, [rng.integers(0, K, n).astype(np.int32)
                                                for n in (60, 50, 40)], K, image_size=16)
    published = []
    for shard in shards:
        keys, labels = load_labels(labels_dir, shard.name)
        published.append((shard.name, keys, (labels + 1) % head1_k))  # another labelling
    more = write_labels(root, published, {"k": head1_k, "round": 1}, folder="labels.1")
    centroids = []
    for h, k in enumerate((K, head1_k)):
        c = rng.standard_normal((k, DIM)).astype(np.float32)
        centroids.append(root / f"centroids.{h}.npy")
        np.save(centroids[-1], c / np.linalg.norm(c, axis=1, keepdims=True))
    return shards, labels_dir, [more], centroids


def run_v2(heads, out, **overrides):
    shards, labels_dir, more, centroids = heads
    options = {**OPTIONS, **overrides}
    return train(shards, labels_dir, out, pop_settings(ModelSpec, options),
                 pop_settings(TrainSettings, options), more_labels=more, centroids=centroids,
                 **options)


def launch_v2(launcher, heads, out, options):
    """The round in a child process group (train_kill.launch), with `options` as run_v2's."""
    shards, labels_dir, more, centroids = heads
    return launch(launcher, shards[0].path.parent, labels_dir, out,
                  {**options, "more_labels": [str(p) for p in more],
                   "centroids": [str(p) for p in centroids]})
