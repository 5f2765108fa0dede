"""Runs `train` in a child process (kill and torchrun tests): one JSON argument with the shards
folder, the labels, the output folder and a flat table of options."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: find `support`
from support.settings import pop_settings  # noqa: E402

from dcpipe.shards.reader import list_shards  # noqa: E402
from dcpipe.stages.common.modelspec import ModelSpec  # noqa: E402
from dcpipe.stages.train import TrainSettings, train  # noqa: E402
from dcpipe.stages.train.bank import BankSpec  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)  # as in the test process: same kernels, same bits
    args = json.loads(sys.argv[1])
    options = args["options"]
    if "bank" in options:  # JSON: {"layout": path, "dtype": ...}
        options["bank"] = BankSpec(Path(options["bank"]["layout"]), options["bank"]["dtype"])
    train(list_shards(args["shards"]), args["labels"], args["out"], pop_settings(ModelSpec, options),
          pop_settings(TrainSettings, options), **options)
