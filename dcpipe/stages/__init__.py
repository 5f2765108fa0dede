"""One package per stage (shard, extract, cluster, train, evaluate), plus the shared `sources`
(where images come from) and `common` (models, images, feature store, labels, metrics, ...).

A stage package never imports another stage package; each exposes its entry point, a settings
dataclass and (where a round holds its output) the names of its outputs.
"""
