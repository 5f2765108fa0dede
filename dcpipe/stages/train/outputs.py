"""What the train stage leaves in a round directory, and whether it is done (no torch)."""
from pathlib import Path

MODEL = "model.pt"  # beside it model.json, written after it (common/models.py)
BODY_OPTIMISER = "optim_body.pt"  # the body's SGD state, carried into the next round
RECORD = "train.json"  # written last: the stage's commit
CHECKPOINT = Path("ckpt") / "last.pt"  # mid-round state, for resuming after a kill


def is_complete(round_dir) -> bool:
    return (Path(round_dir) / RECORD).exists()
