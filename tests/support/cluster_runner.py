"""Runs `cluster` in a child process (torchrun and kill tests): one JSON argument, a list of
runs, each {"store", "out", "options"} with the options as one flat table (settings and the
stage's keywords). Prints each run's record on a line of its own."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find `support`
from support.settings import pop_settings  # noqa: E402

from dcpipe.stages.cluster import ClusterSettings, cluster  # noqa: E402

if __name__ == "__main__":
    for run in json.loads(sys.argv[1]):
        options = dict(run["options"])
        record = cluster(run["store"], run["out"], pop_settings(ClusterSettings, options), **options)
        # One write per line: under torchrun the ranks share this pipe.
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
