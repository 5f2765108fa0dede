"""The learning rate at every step of every round: constant (DeepCluster) or a linear warm-up
then a cosine decay over the whole run (DeepCluster-v2). A pure function of (round, step), so a
run resumed after a kill continues the schedule exactly where it stopped."""
import math

from dcpipe.errors import SettingsError


def lr_at(base: float, schedule: str, warmup_rounds: float, total_rounds: int, round_index: int,
          step: int, steps: int, floor: float) -> float:
    """floor: the share of base the cosine ends at."""
    if schedule == "constant":
        return base
    if total_rounds < 1:
        raise SettingsError("the cosine schedule spans [train] total_rounds rounds: set it "
                            "(`dcpipe run --rounds N` sets it to N when it is 0)")
    t = round_index + step / max(steps, 1)  # rounds done, with the fraction of this one
    if t < warmup_rounds:
        return base * t / warmup_rounds
    span = max(total_rounds - warmup_rounds, 1e-9)
    progress = min((t - warmup_rounds) / span, 1.0)
    final = base * floor
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))
