"""Runs `extract` in a child process for the kill and torchrun tests: one JSON argument."""
import json
import sys

import torch

from dcpipe.shards.reader import list_shards
from dcpipe.stages.extract import extract

if __name__ == "__main__":
    torch.set_num_threads(1)  # as in the test process: same kernels, same bits
    options = json.loads(sys.argv[1])
    shards = list_shards(options.pop("shards_dir"))
    print(json.dumps(extract(shards, options.pop("store"), **options)))
