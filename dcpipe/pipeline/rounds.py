"""The DeepCluster cycle over a workspace: round r = features from model r-1 -> clusters -> model r.

Each function performs one step of one round from the workspace's files and records the config
it ran with; `run` performs whatever steps are missing, so cron can call it every hour. Under
torchrun every rank calls them: what a step reads from the workspace (which steps are done, the
round's shard set, model r-1) is decided on rank 0 and handed to the others, and the workspace
files outside the stages (config.json, shards.json) are written by rank 0 alone.
Stage entry points are imported where used: `dcpipe status` should not pay for importing torch.
"""

import os
import shutil
import time
from dataclasses import replace

from dcpipe.pipeline.config import Config
from dcpipe.pipeline.workspace import STEPS, Workspace, WorkspaceError
from dcpipe.shards.atomic import atomic_write_json, fsync_dir, read_json
from dcpipe.stages.common.distributed import ProcessGroup
from dcpipe.stages.extract.outputs import store_attrs
from dcpipe.stages.train import outputs as train_outputs


def _record(ws: Workspace, r: int, step: str, config: Config) -> None:
    path = ws.round(r).config_record
    recorded = read_json(path, {})
    recorded[step] = config.as_dict()
    atomic_write_json(path, recorded)


def _previous_model(ws: Workspace, r: int):
    """Model r-1's path, or None for round 0 (seeded random init)."""
    if r == 0:
        return None
    if not ws.step_done(r - 1, "train"):
        raise WorkspaceError(f"round {r} needs model {r - 1}, which is not trained: "
                             f"run `dcpipe train --round {r - 1}` (or `dcpipe run --rounds {r + 1}`)")
    return ws.round(r - 1).model


def _extract_inputs(ws: Workspace, r: int, config: Config):
    """Rank 0: model r-1, round r's shard set (fixed here if new), whether round r-1's bank
    became round r's features; the config recorded."""
    model_path = _previous_model(ws, r)  # before round_shards fixes the round's shard set
    shards = ws.round_shards(r)
    _record(ws, r, "extract", config)
    return model_path, shards, _adopt_bank(ws, r, [s.name for s in shards], config)


def extract_round(ws: Workspace, r: int, config: Config, progress: bool = True) -> dict:
    from dcpipe.stages.extract import extract

    group = ProcessGroup.start()
    model_path, shards, adopted = group.from_rank_zero(lambda: _extract_inputs(ws, r, config))
    if adopted:
        attrs = store_attrs(ws.round(r).features)
        return {"store": str(ws.round(r).features), "rows": attrs["n_rows"], "dim": attrs["dim"],
                "shards": len(shards), "seconds": 0.0, "from_bank": str(ws.round(r - 1).bank)}
    return extract(shards, ws.round(r).features, config.model, config.extract,
                   model_path=model_path, seed=config.seed, progress=progress)


def _adopt_bank(ws: Workspace, r: int, shard_names: list[str], config: Config) -> bool:
    """With [train] features = "bank", the store round r-1's training filled becomes round r's
    features: a rename (whole or not at all; rank 0's alone), when it covers exactly round r's
    shards (a collection that grew since is extracted: the bank has no rows for the new
    shards). True when round r's features are that store. A bank that is not adopted is deleted:
    round r's features are extracted, and nothing else reads it (it is as large as a store)."""
    if r == 0:
        return False
    bank, features = ws.round(r - 1).bank, ws.round(r).features
    wanted = config.train.features == "bank"
    if not features.exists():
        if wanted and store_attrs(bank).get("shard_names") == shard_names:
            os.rename(bank, features)
            fsync_dir(features.parent)
            fsync_dir(bank.parent)
        else:
            _discard(bank)
    if not wanted:
        return False
    attrs = store_attrs(features)
    return bool(attrs.get("complete")) and attrs.get("model", {}).get("source") == "bank"


def _discard(store) -> None:
    """Renamed first, so that a store half deleted by a kill is never taken for a whole one;
    what such a kill leaves goes at the next call."""
    doomed = store.with_name(store.name + ".discarded")
    if store.exists():
        os.rename(store, doomed)
        fsync_dir(store.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def _make_way_for_clustering(ws: Workspace, r: int, force: bool) -> None:
    """New labels make the round's training stale: it is discarded, but only with `force`; a
    later round, built on model r, refuses the redo whatever `force` says."""
    later = [d.index for d in ws.rounds() if d.index > r and any(map(d.started, STEPS))]
    if later:
        raise WorkspaceError(f"rounds {later} were built on round {r}'s model: re-clustering "
                             f"round {r} would leave them stale; move those round folders away first")
    here = ws.round(r)
    if here.started("train"):
        if not force:
            raise WorkspaceError(f"round {r} is already trained (or training): re-clustering "
                                 f"replaces its labels, so its model would be stale; add --force "
                                 f"to discard its model, training record and checkpoint")
        train_outputs.discard(here.path)
        here.eval_record.unlink(missing_ok=True)


def _previous_labels(ws: Workspace, r: int, config: Config):
    """Rank 0: round r-1's labels if it has any (for the NMI between rounds); the config recorded."""
    _record(ws, r, "cluster", config)
    previous = ws.round(r - 1)
    return previous.labels if r > 0 and previous.done("cluster") else None


def cluster_round(ws: Workspace, r: int, config: Config, progress: bool = True,
                  force: bool = False) -> dict:
    """Extract if needed, then cluster; a clustered round is clustered again (see
    _make_way_for_clustering)."""
    from dcpipe.stages.cluster import cluster

    group = ProcessGroup.start()
    extracted = group.from_rank_zero(
        lambda: _make_way_for_clustering(ws, r, force) or ws.step_done(r, "extract"))
    if not extracted:
        extract_round(ws, r, config, progress)
    prev_labels_dir = group.from_rank_zero(lambda: _previous_labels(ws, r, config))
    return cluster(ws.round(r).features, ws.round(r).path, config.cluster, seed=config.seed,
                   round_index=r, prev_labels_dir=prev_labels_dir, progress=progress)


def _train_inputs(ws: Workspace, r: int, config: Config):
    """Rank 0: round r's labels checked, model r-1 and the round's shard set; the config recorded."""
    if not ws.step_done(r, "cluster"):
        raise WorkspaceError(f"round {r} has no labels: run `dcpipe cluster --round {r}` first")
    model_path = _previous_model(ws, r)
    _record(ws, r, "train", config)
    return model_path, ws.round_shards(r)


def train_round(ws: Workspace, r: int, config: Config, progress: bool = True) -> dict:
    from dcpipe.stages.train import train

    group = ProcessGroup.start()
    model_path, shards = group.from_rank_zero(lambda: _train_inputs(ws, r, config))
    here = ws.round(r)
    v2 = config.train.method == "deepcluster-v2"
    heads = range(config.cluster.heads) if v2 else range(0)
    from dcpipe.stages.train.bank import BankSpec

    bank = BankSpec(here.features, config.extract.dtype) if config.train.features == "bank" else None
    return train(shards, here.labels, here.path, config.model, config.train,
                 model_path=model_path,
                 body_optim_path=ws.round(r - 1).body_optimiser if r > 0 else None,
                 more_labels=[here.head_labels(h) for h in heads if h > 0],
                 centroids=[here.head_centroids(h) for h in heads], bank=bank,
                 seed=config.seed, round_index=r, progress=progress)


STEP_FUNCTIONS = {"extract": extract_round, "cluster": cluster_round, "train": train_round}


def run(ws: Workspace, n_rounds: int, config: Config, progress: bool = True, log=print) -> list:
    """Perform every missing step of rounds 0..n_rounds-1; return [(round, step, seconds)].

    Under torchrun every rank runs every step: rank 0 says which steps are missing, and the
    ranks meet after each step, so none starts one before the last has finished everywhere.
    A cosine schedule with no [train] total_rounds spans the n_rounds of this run."""
    if config.train.lr_schedule == "cosine" and config.train.total_rounds == 0:
        config = replace(config, train=replace(config.train, total_rounds=n_rounds))
    done = []
    group = ProcessGroup.start()
    for r in range(n_rounds):
        for step in ("cluster", "train"):  # cluster extracts first when needed
            if group.from_rank_zero(lambda: ws.step_done(r, step)):
                continue
            if group.rank == 0:
                log(f"round {r}: {step}")
            start = time.perf_counter()
            STEP_FUNCTIONS[step](ws, r, config, progress)
            group.barrier()
            done.append((r, step, round(time.perf_counter() - start, 1)))
    return done
