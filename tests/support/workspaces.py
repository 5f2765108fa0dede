"""A tiny workspace: two shards of synthetic images and a config that runs a round in seconds."""

from support.sample_shards import make_collection

TINY = """
[model]
width = 8
[extract]
batch_size = 32
workers = 0
[cluster]
k = 4
pca_dim = 16
[train]
method = "deepcluster"
batch_size = 32
workers = 1
"""


def tiny_workspace(root, n_shards=2, per_shard=40, config=TINY):
    root.mkdir(parents=True, exist_ok=True)
    (root / "dcpipe.toml").write_text(config)
    make_collection(root / "shards", n_shards, per_shard)
    return root
