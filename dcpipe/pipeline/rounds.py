"""The DeepCluster cycle over a workspace: round r = features from model r-1 -> clusters -> model r.

Each function performs one step of one round from the workspace's files and records the config
it ran with; `run` performs whatever steps are missing, so cron can call it every hour.
Stage modules are imported where used: `dcpipe status` should not pay for importing torch.
"""

import os
import time

from dcpipe.shards.atomic import atomic_write_json, read_json

from dcpipe.pipeline.workspace import Workspace, WorkspaceError

STEPS = ("extract", "cluster", "train")


def round_seed(config: dict, r: int, step: str) -> int:
    """A different, reproducible seed for every round and step (the paper reseeds each round)."""
    return config["seed"] * 1_000_003 + r * 101 + STEPS.index(step)


def _record(ws: Workspace, r: int, step: str, config: dict) -> None:
    path = ws.round_dir(r) / "config.json"
    recorded = read_json(path, {})
    recorded[step] = config
    atomic_write_json(path, recorded)


def _previous_model(ws: Workspace, r: int):
    """Model r-1's path, or None for round 0 (seeded random init)."""
    if r == 0:
        return None
    path = ws.round_dir(r - 1) / "model.pt"
    if not ws.step_done(r - 1, "train"):
        raise WorkspaceError(f"round {r} needs model {r - 1}, which is not trained: "
                             f"run `dcpipe train --round {r - 1}` (or `dcpipe run --rounds {r + 1}`)")
    return path


def model_args(config: dict) -> dict:
    m = config["model"]
    return {"arch": m["arch"], "sobel": m["sobel"], "input_size": m["input_size"],
            "width": m["width"] or None}


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def extract_round(ws: Workspace, r: int, config: dict, progress: bool = True) -> dict:
    shards = ws.round_shards(r)
    model_path = _previous_model(ws, r)
    from dcpipe.stages.extract.stage import extract

    if is_rank_zero():
        _record(ws, r, "extract", config)
    e = config["extract"]
    return extract(shards, ws.round_dir(r) / "features.zarr", model_path=model_path,
                   seed=config["seed"], batch_size=e["batch_size"], workers=e["workers"],
                   dtype=e["dtype"], chunk_rows=e["chunk_rows"], progress=progress,
                   **model_args(config))


def cluster_round(ws: Workspace, r: int, config: dict, progress: bool = True) -> dict:
    from dcpipe.stages.cluster.stage import cluster

    if not ws.step_done(r, "extract"):
        extract_round(ws, r, config, progress)
    _record(ws, r, "cluster", config)
    c = config["cluster"]
    prev = ws.round_dir(r - 1) / "labels"
    return cluster(ws.round_dir(r) / "features.zarr", ws.round_dir(r), k=c["k"],
                   pca_dim=c["pca_dim"], method=c["method"], niter=c["niter"],
                   refine_passes=c["refine_passes"], sample_size=c["sample_size"],
                   seed=round_seed(config, r, "cluster"),
                   prev_labels_dir=prev if r > 0 and ws.step_done(r - 1, "cluster") else None,
                   round_index=r, progress=progress)


def train_round(ws: Workspace, r: int, config: dict, progress: bool = True) -> dict:
    if not ws.step_done(r, "cluster"):
        raise WorkspaceError(f"round {r} has no labels: run `dcpipe cluster --round {r}` first")
    model_path = _previous_model(ws, r)
    from dcpipe.stages.train.stage import train

    if is_rank_zero():
        _record(ws, r, "train", config)
    t = config["train"]
    body_optim = ws.round_dir(r - 1) / "optim_body.pt" if r > 0 else None
    return train(ws.round_shards(r), ws.round_dir(r) / "labels", ws.round_dir(r),
                 model_path=model_path, body_optim_path=body_optim,
                 seed=round_seed(config, r, "train"), init_seed=config["seed"], lr=t["lr"],
                 momentum=t["momentum"], weight_decay=t["weight_decay"], batch_size=t["batch_size"],
                 reassign=t["reassign"], crop_min=t["crop_min"], flip=t["flip"], workers=t["workers"],
                 checkpoint_every=t["checkpoint_every"], round_index=r, progress=progress,
                 **model_args(config))


STEP_FUNCTIONS = {"extract": extract_round, "cluster": cluster_round, "train": train_round}


def run(ws: Workspace, n_rounds: int, config: dict, progress: bool = True, log=print) -> list:
    """Perform every missing step of rounds 0..n_rounds-1; return [(round, step, seconds)]."""
    done = []
    for r in range(n_rounds):
        for step in ("cluster", "train"):  # cluster extracts first when needed
            if ws.step_done(r, step):
                continue
            log(f"round {r}: {step}")
            start = time.perf_counter()
            STEP_FUNCTIONS[step](ws, r, config, progress)
            done.append((r, step, round(time.perf_counter() - start, 1)))
    return done
