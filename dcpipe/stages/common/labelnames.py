"""Where a label shard index lives (common/labels.py), named without importing numpy: the
cluster stage's outputs module uses them to say whether a round is clustered."""

FOLDER = "labels"  # the index's folder in a round directory
INDEX = "index.json"
