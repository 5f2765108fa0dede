"""What the train stage leaves in a round directory, and whether it is done (no torch)."""
import shutil
from pathlib import Path

MODEL = "model.pt"  # beside it model.json, written after it (common/models.py)
MODEL_META = "model.json"
BODY_OPTIMISER = "optim_body.pt"  # the body's SGD state, carried into the next round
RECORD = "train.json"  # written last: the stage's commit
CHECKPOINT = Path("ckpt") / "last.pt"  # mid-round state, for resuming after a kill
BANK = "bank.zarr"  # features = "bank": round r+1's feature store, until the pipeline moves it there


def is_complete(round_dir) -> bool:
    return (Path(round_dir) / RECORD).exists()


def has_outputs(round_dir) -> bool:
    """Whether the round holds anything of a training (complete, or a checkpoint to resume)."""
    d = Path(round_dir)
    return any((d / name).exists() for name in (RECORD, MODEL, CHECKPOINT))


def discard(round_dir) -> None:
    """Remove the round's training: its commit (train.json) first, so a kill midway leaves a
    round that is simply not trained."""
    d = Path(round_dir)
    for name in (RECORD, MODEL, MODEL_META, BODY_OPTIMISER):
        (d / name).unlink(missing_ok=True)
    shutil.rmtree(d / BANK, ignore_errors=True)
    shutil.rmtree(d / CHECKPOINT.parent, ignore_errors=True)
