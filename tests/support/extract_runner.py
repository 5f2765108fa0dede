"""Runs `extract` in a child process for the kill and torchrun tests: one JSON argument."""
import json
import sys

import torch

from dcpipe.shards.reader import list_shards
from dcpipe.stages.extract.stage import extract

if __name__ == "__main__":
    torch.set_num_threads(1)  # as in the test process: same kernels, same bits
    options = json.loads(sys.argv[1])
    shards = list_shards(options.pop("shards_dir"))
    # One write per line: under torchrun both ranks share this pipe, and print's separate
    # newline write lets their lines interleave.
    sys.stdout.write(json.dumps(extract(shards, options.pop("store"), **options)) + "\n")
    sys.stdout.flush()
