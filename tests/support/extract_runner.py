"""Runs `extract` in a child process for the kill and torchrun tests: one JSON argument."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find `support`
from support.settings import pop_settings  # noqa: E402

from dcpipe.shards.reader import list_shards  # noqa: E402
from dcpipe.stages.common.modelspec import ModelSpec  # noqa: E402
from dcpipe.stages.extract import ExtractSettings, extract  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)  # as in the test process: same kernels, same bits
    options = json.loads(sys.argv[1])
    shards = list_shards(options.pop("shards_dir"))
    store = options.pop("store")
    result = extract(shards, store, pop_settings(ModelSpec, options),
                     pop_settings(ExtractSettings, options), **options)
    # One write per line: under torchrun both ranks share this pipe, and print's separate
    # newline write lets their lines interleave.
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
