"""The training stage: model r from model r-1 on round r's pseudo-labels, straight from the shards.

`train(shards, labels_dir, out_dir, ...)` streams the shards through the cluster-balanced sampler
(stages/sampler.py), decodes and augments in loader workers (stages/trainbatches.py) and trains
with the paper's recipe: a new top layer Linear(feature_dim, k) every round (N(0, 0.01), bias 0)
with its own SGD (lr, weight decay, no momentum, as the authors' main.py), the body's SGD
(lr, momentum, weight decay) carried from round to round through `optim_body.pt`, cross-entropy.

Steps and batches. With D_q draws on rank q (fixed by the labels and the seed, known before the
first step) the round has S = ceil(sum D / (world * batch_size)) steps and rank q's batch i is
its draws [i*D_q//S, (i+1)*D_q//S). Every draw is used exactly once, all ranks take S steps (a
rank with fewer samples takes smaller batches, never hangs the others), and each rank's loss is
scaled by world / (global batch) so that DDP's gradient average is the mean over the global
batch. A batch larger than batch_size (a rank with more samples) is split into micro-batches;
every rank makes the same number of passes per step, since DDP's collectives must pair up.
batch_size 0 takes the batch from sum D / world, and the lr with it (batchsize.py).

Checkpoints (`out_dir/ckpt/last.pt`, every `checkpoint_every` steps and at the end, atomic,
plain tensors and lists: torch.load(weights_only=True)) hold the model, both optimisers, the
step, the loss curve and tallies. The sampler's position is a function of the step (rank q has
consumed step*D_q//S draws) and every random choice (draws, shuffles, augmentation, dropout) is
seeded by counters, so a run killed at any moment and started again finishes the round exactly
as an uninterrupted run would. `train.json`, written last, marks the round's training complete.
Every .pt carries the digest of its contents and is refused when damaged (common/digests.py).
A checkpoint records the digests of the label indexes it trains on (labels.index_digest): when
the round was clustered again since (new labels), it is not resumed; the round's training starts
over, with a warning, since the old steps trained on labels that no longer exist.
"""
from __future__ import annotations

import hashlib
import logging
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dcpipe.errors import DcpipeError, FileFormatError, SettingsError
from dcpipe.shards.atomic import atomic_write_json, read_json
from dcpipe.shards.reader import ShardInfo
from dcpipe.stages.common import seeds
from dcpipe.stages.common.digests import load_checked, save_checked
from dcpipe.stages.common.distributed import ProcessGroup
from dcpipe.stages.common.labels import LabelsError, index_digest, read_index
from dcpipe.stages.common.models import (eval_transform, load_model, random_init, save_model,
                                         train_transform)
from dcpipe.stages.common.precision import autocast, autocast_dtype
from dcpipe.stages.common.safeload import load_npy
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.common.seeds import Domain
from dcpipe.stages.train import batchsize, outputs
from dcpipe.stages.train.bank import BankPart, BankSpec, assemble, check_layout
from dcpipe.stages.train.balanced_sampler import BalancedSampler, cluster_sizes
from dcpipe.stages.train.batches import MergedBatches, open_streams
from dcpipe.stages.train.multicrop import MultiCrop
from dcpipe.stages.train.objectives import Classification, PrototypeMatching, channels_last
from dcpipe.stages.train.running_stats import recompute, sample_images
from dcpipe.stages.train.schedule import lr_at
from dcpipe.stages.train.settings import TrainSettings
from dcpipe.stages.train.top_fit import ClusterMoments, fit_samples

log = logging.getLogger("dcpipe.train")
CKPT_FORMAT = "dcpipe.train-ckpt/1"
CHUNK = 32  # draws a loader worker decodes as one unit


class TrainingDiverged(DcpipeError):
    """A non-finite loss or model: the settings (usually lr) make this round's training blow up."""


def train(shards: list[ShardInfo], labels_dir, out_dir, model: ModelSpec = ModelSpec(),
          settings: TrainSettings = TrainSettings(), *, model_path=None, body_optim_path=None,
          more_labels=(), centroids=(), bank: BankSpec | None = None, seed: int = 0,
          round_index: int = 0, progress: bool = True) -> dict:
    """Train one round; returns the train.json record (at once if the round is already trained).

    `model_path` None = round 0: the random init of `model` for the workspace `seed`, the network
    the extract stage made round 0's features with. `seed` and `round_index` seed every random
    choice of the round (common.seeds). Under torchrun, rank and world come from the environment.
    DeepCluster-v2 (settings.method) also takes the round's further heads' label indexes
    (`more_labels`) and every head's centroids (`centroids`, head 0 first): the prototypes.
    With settings.features "bank" it also leaves the next round's feature store, `bank.zarr`,
    made like `bank` says (bank.py).
    """
    out_dir = Path(out_dir)
    record = read_json(out_dir / outputs.RECORD)
    if record is not None:
        return record
    config = {
        "shards": [s.name for s in shards], "labels_dir": str(labels_dir),
        "model_path": None if model_path is None else str(model_path),
        "body_optim_path": None if body_optim_path is None else str(body_optim_path),
        "more_labels": [str(p) for p in more_labels], "centroids": [str(p) for p in centroids],
        "bank_layout": None if bank is None else str(bank.layout),
        "bank_dtype": None if bank is None else bank.dtype,
        "labels_sha256": [index_digest(d) for d in (labels_dir, *more_labels)],
        **model.as_dict(), **asdict(settings), "seed": seed, "round": round_index,
        "chunk": CHUNK,
        "streams": max(1, settings.workers),
    }
    del config["workers"], config["checkpoint_every"]  # how to run, not what is computed
    _check_method(config, model)
    if settings.features == "bank":
        if bank is None:
            raise SettingsError('[train] features = "bank" needs the round\'s feature store '
                                "to copy its layout from (train(..., bank=BankSpec(...)))")
        check_layout(bank, shards)
    group = ProcessGroup.start()
    run = RoundTraining(group, shards, Path(labels_dir), out_dir, config)
    return run.run(settings.workers, settings.checkpoint_every, progress)


@dataclass(frozen=True)
class StepPlan:
    """S steps; rank q's batch i is its draws [i*D_q//S, (i+1)*D_q//S)."""
    draws: tuple
    steps: int

    @classmethod
    def make(cls, draws: list[int], batch_size: int) -> StepPlan:
        if sum(draws) == 0:
            raise LabelsError("the labels hold no labelled sample to train on")
        return cls(tuple(draws), math.ceil(sum(draws) / (len(draws) * batch_size)))

    def consumed(self, rank: int, step: int) -> int:
        return step * self.draws[rank] // self.steps

    def batch(self, rank: int, step: int) -> int:
        return self.consumed(rank, step + 1) - self.consumed(rank, step)

    def global_batch(self, step: int) -> int:
        return sum(self.batch(q, step) for q in range(len(self.draws)))

    def parts(self, step: int, batch_size: int) -> int:
        """Forward passes of step i on every rank: its largest batch in pieces <= batch_size."""
        return max(1, *(math.ceil(self.batch(q, step) / batch_size)
                        for q in range(len(self.draws))))


def train_step(net, optimizers, images, labels, scale: float, parts: int = 1,
               objective=Classification(), dtype=None) -> tuple:
    """One SGD step on the objective's summed loss * scale, in `parts` forward/backward passes
    whose gradients add up (DDP syncs on the last); returns that loss (detached) and the bank
    rows of the images (v2; None for v1).

    Under DDP every rank must make the same number of passes (each forward broadcasts the
    BatchNorm buffers, each step all-reduces the gradients once), so a rank with fewer samples
    gets empty parts: a zero loss on a blank image in eval mode (BatchNorm statistics untouched).
    """
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    total, rows = torch.zeros((), device=images.device), []
    for j, (x, y) in enumerate(zip(images.tensor_split(parts), labels.tensor_split(parts))):
        last = j == parts - 1
        with nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync():
            with autocast(images.device, dtype):
                if len(y):
                    loss, part_rows = objective.loss(net, x, y)
                    loss = loss * scale
                    rows.append(part_rows)
                else:
                    net.eval()
                    loss = objective.blank(net, images)
                    net.train()
            loss.backward()
        total += loss.detach()
    for opt in optimizers:
        opt.step()
    return total, (torch.cat(rows) if rows and rows[0] is not None else None)


class Tally:
    """Loss and draws per cluster since the last reduction; rank 0 holds the sums over ranks."""

    def __init__(self, k: int, device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.draws = torch.zeros(k, dtype=torch.int64)
        self.interval_steps = 0

    def add(self, loss: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss.double()
        head0 = labels if labels.dim() == 1 else labels[:, 0]
        self.draws += torch.bincount(head0, minlength=len(self.draws))
        self.interval_steps += 1

    def reduce(self, ctx: ProcessGroup) -> float:
        """Sum over ranks into rank 0; returns the summed loss, the same on every rank."""
        self.loss, self.draws = ctx.sum(self.loss), ctx.sum(self.draws)
        total = self.loss.item()
        if ctx.rank != 0:
            self.loss.zero_()
            self.draws.zero_()
        return total

    def take_interval_mean(self) -> float:
        mean = self.loss.item() / self.interval_steps
        self.loss.zero_()
        self.interval_steps = 0
        return mean

    def state(self) -> dict:
        return {"loss": self.loss.item(), "draws": self.draws.clone(),
                "interval_steps": self.interval_steps}

    def load(self, state: dict, rank: int) -> None:
        self.interval_steps = state["interval_steps"]
        if rank == 0:
            self.loss.fill_(state["loss"])
            self.draws.copy_(state["draws"])


class RoundTraining:
    """Everything one rank needs for one round: sampler, step plan, model, optimisers."""

    def __init__(self, ctx: ProcessGroup, shards: list[ShardInfo], labels_dir: Path, out_dir: Path,
                 config: dict):
        self.t0 = time.perf_counter()
        self.ctx, self.out_dir = ctx, out_dir
        self.ckpt_path = out_dir / outputs.CHECKPOINT
        self.k = _checked_k(shards, labels_dir)
        ckpt = _same_labels(_load_checkpoint(self.ckpt_path), config, self.ckpt_path)
        if ckpt is not None:
            config = {**config, "streams": ckpt["config"]["streams"]}
            _check_same_config(ckpt["config"], config, self.ckpt_path)
        self.config = config
        self.mine = [s for pos, s in enumerate(shards) if pos % ctx.world == ctx.rank]
        self.sizes = ctx.sum(torch.from_numpy(cluster_sizes(self.mine, labels_dir, self.k))).numpy()
        self.sampler = BalancedSampler(
            shards, labels_dir, self.sizes, reassign=config["reassign"], seed=config["seed"],
            round_index=config["round"], balanced=config["method"] == "deepcluster",
            more_labels_dirs=config["more_labels"],
            rank=ctx.rank, world=ctx.world, streams=config["streams"],
            interleave=config["interleave"], window=config["window"])
        self.lengths = self.sampler.stream_lengths()
        counts = torch.zeros(ctx.world, dtype=torch.int64)
        counts[ctx.rank] = sum(self.lengths)
        draws = ctx.sum(counts).tolist()  # every rank's draws
        self.batch_size, self.lr = batchsize.resolve(config["batch_size"], config["lr"],
                                                     sum(draws) // ctx.world)
        self.plan = StepPlan.make(draws, self.batch_size)
        self.model, self.body_opt, self.top_opt = self._model_and_optimisers(ckpt is None)
        self.transform, self.sample_shape, self.objective = self._augmentation()
        self.dtype = autocast_dtype(config["precision"], ctx.device)
        self.tally = Tally(self.k, ctx.device)
        self.bank = self._bank_part(shards, fresh=ckpt is None)
        self.step, self.loss_curve, self.elapsed_before = 0, [], 0.0
        self.bn_batches = 0  # batches the saved BatchNorm statistics average (bn_images)
        if ckpt is not None:
            self._resume(ckpt)

    # ------------------------------------------------------------ setup
    def _model_and_optimisers(self, fresh: bool):
        c = self.config
        if c["model_path"] is None:
            model = random_init(ModelSpec.from_meta(c), c["seed"])
        else:
            model, meta = load_model(c["model_path"])
            _check_model_matches(meta, c)
        if c["method"] == "deepcluster-v2":
            centroids = _centroids(c["centroids"], [c["labels_dir"], *c["more_labels"]],
                                   model.feature_dim)
            model.set_prototypes(centroids, c["temperature"])
        else:
            top_seed = seeds.int_seed(c["seed"], c["round"], Domain.TOP_INIT)
            model.replace_top(self.k, torch.Generator().manual_seed(top_seed))
        model.to(self.ctx.device, memory_format=torch.channels_last).train()
        body = torch.optim.SGD(model.body_parameters(), lr=self.lr, momentum=c["momentum"],
                               weight_decay=c["weight_decay"])
        top = (torch.optim.SGD(model.top.parameters(), lr=self.lr, weight_decay=c["weight_decay"])
               if c["method"] == "deepcluster" else None)  # v2's prototypes are not trained
        if c["body_optim_path"] is not None and fresh:
            _load_body_optimiser(body, c, self.lr)
        return model, body, top

    def _bank_part(self, shards: list[ShardInfo], fresh: bool) -> BankPart | None:
        if self.config["features"] != "bank":
            return None
        if fresh and self.ctx.rank == 0:  # a bank of an earlier training of the round is stale
            shutil.rmtree(self.out_dir / outputs.BANK, ignore_errors=True)
        return BankPart(self.out_dir, shards, self.ctx.rank, self.ctx.world,
                        self.model.feature_dim, self.config["bank_dtype"], fresh)

    def _resume(self, ckpt: dict) -> None:
        if ckpt["sampler"]["draws"] != list(self.plan.draws):
            raise LabelsError(f"{self.ckpt_path}: the round's draws changed since the checkpoint "
                              "(labels or shards differ); delete the ckpt folder to start over")
        self.model.load_state_dict(ckpt["model"])
        self.body_opt.load_state_dict(ckpt["optim_body"])
        if self.top_opt is not None:
            self.top_opt.load_state_dict(ckpt["optim_top"])
        self.tally.load(ckpt["tally"], self.ctx.rank)
        self.step, self.loss_curve = ckpt["step"], ckpt["loss_curve"]
        self.elapsed_before = ckpt["elapsed_s"]

    # ------------------------------------------------------------ the loop
    def run(self, workers: int, checkpoint_every: int, progress: bool) -> dict:
        first, plan = self.step, self.plan
        bar = tqdm(total=plan.steps, initial=first, unit="step", desc="train", dynamic_ncols=True,
                   disable=not progress or self.ctx.rank != 0)
        fitted = first == 0 and self.config["head_init"] == "fitted"  # resumed: in the checkpoint
        top_fit_s = self._fit_top(workers) if fitted else 0.0
        loop_start, waited = time.perf_counter(), 0.0
        if first < plan.steps:
            batches = self._batches(workers)
            try:
                waited = self._loop(batches, checkpoint_every, bar)
            finally:
                batches.close()
        bar.close()
        loop_s = time.perf_counter() - loop_start
        bn_s = self._recompute_running_stats() if self.config["bn_images"] else 0.0
        timing = {"startup_s": loop_start - self.t0 - top_fit_s, "top_fit_s": top_fit_s,
                  "loop_s": loop_s, "data_wait_s": waited, "bn_s": bn_s,
                  "samples": sum(plan.consumed(q, plan.steps) - plan.consumed(q, first)
                                 for q in range(self.ctx.world))}
        return self._finish(first, timing)

    def _fit_top(self, workers: int) -> float:
        """head_init "fitted": the top layer set from the round's first draws (top_fit.py),
        with the BatchNorm statistics as they were before those forward passes; its seconds."""
        started, c, ctx = time.perf_counter(), self.config, self.ctx
        moments = ClusterMoments(self.k, self.model.feature_dim)
        wanted = min(fit_samples(self.k, ctx.world), sum(self.lengths))
        kept = {name: b.clone() for name, b in self.model.named_buffers()}
        torch.manual_seed(seeds.int_seed(c["seed"], c["round"], Domain.TOP_FIT, ctx.rank))
        batches = self._batches(workers)
        try:
            with torch.no_grad(), autocast(ctx.device, self.dtype):
                for done in range(0, wanted, self.batch_size):
                    images, labels, _ = batches.take(min(self.batch_size, wanted - done))
                    x = channels_last(images.to(ctx.device))
                    moments.add(self.model.classifier_output(x), labels)
        finally:
            batches.close()
        top = self.model.top  # the round's random top layer: the size the fitted one keeps
        weight, bias = moments.over_ranks(ctx).discriminant(top.weight.norm(dim=1).mean().item())
        with torch.no_grad():
            for name, b in self.model.named_buffers():
                b.copy_(kept[name])
            top.weight.copy_(weight)
            top.bias.copy_(bias)
        return time.perf_counter() - started

    def _recompute_running_stats(self) -> float:
        """[train] bn_images: the saved model's BatchNorm statistics over a seeded sample of the
        round's images, each rank's share from its own shards (running_stats.py); its seconds.
        Run after the last checkpoint, which keeps training's statistics: a resumed round
        recomputes them from the same weights and sample."""
        started, c, ctx = time.perf_counter(), self.config, self.ctx
        my_rows = sum(s.n_samples for s in self.mine)
        share = my_rows / max(1, int(ctx.sum(torch.tensor(my_rows))))
        rng = random.Random(seeds.int_seed(c["seed"], c["round"], Domain.BN_SAMPLE, ctx.rank))
        images = [s.image for s in sample_images(self.mine, round(c["bn_images"] * share), rng)]
        transform = eval_transform(self.model.config["input_size"])
        self.bn_batches = recompute(self.model, images, transform, self.batch_size, ctx, self.dtype)
        return time.perf_counter() - started

    def _batches(self, workers: int) -> MergedBatches:
        c, device = self.config, self.ctx.device
        streams = open_streams(self.sampler, c["chunk"], self.transform, workers,
                               prefetch=max(2, 2 * self.batch_size // (c["chunk"] * c["streams"])),
                               pin_memory=device.type == "cuda")
        heads = len(c["more_labels"]) + 1
        return MergedBatches(self.lengths, c["chunk"], streams, self.sample_shape,
                             start=self.plan.consumed(self.ctx.rank, self.step),
                             label_shape=(heads,) if heads > 1 else ())

    def _augmentation(self):
        """(transform, packed sample shape, objective) of the method."""
        c, size = self.config, self.model.config["input_size"]
        if c["method"] == "deepcluster-v2":
            crops = MultiCrop(size, c["small_crops"], big_min=c["crop_min"],
                              colour_strength=c["colour_strength"])
            return crops, crops.sample_shape, PrototypeMatching(crops.unpack)
        return (train_transform(size, crop_min=c["crop_min"], flip=c["flip"]), (3, size, size),
                Classification())

    def _loop(self, batches: MergedBatches, checkpoint_every: int, bar) -> float:
        """Steps from self.step to the end; returns the seconds spent waiting for data."""
        c, ctx, plan = self.config, self.ctx, self.plan
        net = self.model
        if ctx.world > 1:
            ids = [ctx.device] if ctx.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=ids)
        loop_start, waited = time.perf_counter(), 0.0
        for i in range(self.step, plan.steps):
            t = time.perf_counter()
            images, labels, ids = batches.take(plan.batch(ctx.rank, i))
            waited += time.perf_counter() - t
            if isinstance(self.transform, MultiCrop):  # v2: colour steps batched, seeded per step
                colour = seeds.int_seed(c["seed"], c["round"], Domain.COLOUR, ctx.rank, i)
                images = self.transform.distort(images, torch.Generator().manual_seed(colour))
            torch.manual_seed(seeds.int_seed(c["seed"], c["round"], Domain.DROPOUT, i, ctx.rank))
            self._set_lr(i)
            loss, bank_rows = train_step(
                net, self.optimizers, images.to(ctx.device, non_blocking=True),
                labels.to(ctx.device, non_blocking=True), ctx.world / plan.global_batch(i),
                plan.parts(i, self.batch_size), self.objective, self.dtype)
            if self.bank is not None:
                self.bank.record(ids, bank_rows)
            self.tally.add(loss, labels)
            self._after_step(i + 1, checkpoint_every, time.perf_counter() - loop_start, bar)
        return waited

    @property
    def optimizers(self) -> list:
        return [opt for opt in (self.body_opt, self.top_opt) if opt is not None]

    def _lr(self, step: int) -> float:
        c = self.config
        return lr_at(self.lr, c["lr_schedule"], c["warmup_rounds"], c["total_rounds"],
                     c["round"], step, self.plan.steps, c["lr_floor"])

    def _set_lr(self, step: int) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = self._lr(step)

    def _reduce_tally(self, done: int) -> None:
        """Every rank sees the same sum, so all of them stop together (DDP would hang otherwise)."""
        loss = self.tally.reduce(self.ctx)
        if not math.isfinite(loss):
            self._diverged(f"the loss is {loss} by step {done} of {self.plan.steps}")

    def _diverged(self, what: str) -> None:
        """Stop with no model written and no checkpoint to resume the divergence from."""
        if self.ctx.rank == 0:
            self.ckpt_path.unlink(missing_ok=True)
        raise TrainingDiverged(f"training diverged in round {self.config['round']}: {what} "
                               f"(lr {self.config['lr']}); no model written: lower [train] lr "
                               "and train again")

    def _after_step(self, done: int, checkpoint_every: int, loop_s: float, bar) -> None:
        end = done == self.plan.steps
        if done % self.config["loss_every"] == 0 or end:
            self._reduce_tally(done)
            if self.ctx.rank == 0:
                self.loss_curve.append([done, self.tally.take_interval_mean()])
                bar.set_postfix(loss=f"{self.loss_curve[-1][1]:.3f}")
            else:
                self.tally.interval_steps = 0
        if done % checkpoint_every == 0 or end:
            if self.bank is not None:  # every rank's rows durable before the checkpoint: the
                self.bank.flush()  # reduction below waits for all ranks
            self._reduce_tally(done)
            self.step = done
            if self.ctx.rank == 0:
                self._checkpoint(self.elapsed_before + loop_s)
        bar.update(1)

    def _checkpoint(self, elapsed_s: float) -> None:
        plan = self.plan
        save_checked(self.ckpt_path, {
            "format": CKPT_FORMAT, "config": self.config, "step": self.step,
            "model": _cpu_state(self.model), "optim_body": self.body_opt.state_dict(),
            "optim_top": self.top_opt.state_dict() if self.top_opt else None,
            "loss_curve": self.loss_curve,
            "tally": self.tally.state(), "elapsed_s": elapsed_s,
            "sampler": {"draws": list(plan.draws), "steps": plan.steps,
                        "consumed": [plan.consumed(q, self.step) for q in range(len(plan.draws))]},
        })

    # ------------------------------------------------------------ outputs
    def _finish(self, first: int, timing: dict) -> dict:
        """Rank 0 writes model.pt, optim_body.pt, then train.json; every rank returns the record."""
        if not all(torch.isfinite(p).all() for p in self.model.state_dict().values()):
            self._diverged("the trained weights are not finite")
        self.tally.draws = self.ctx.sum(self.tally.draws)  # rank 0 holds the sum, others zeros
        record = self._record(first, timing)
        if self.ctx.rank == 0:
            save_model(self.out_dir / outputs.MODEL, self.model,
                       {"k": self.k, "round": self.config["round"], "train_seed": self.config["seed"],
                        "steps": self.plan.steps})
            save_checked(self.out_dir / outputs.BODY_OPTIMISER, self.body_opt.state_dict())
            if self.bank is not None:
                record["timings"]["bank_s"] = self._assemble_bank()
            atomic_write_json(self.out_dir / outputs.RECORD, record)
        self.ctx.barrier()
        return record

    def _assemble_bank(self) -> float:
        """Rank 0, once every rank's part is flushed (at the last checkpoint): bank.zarr, which
        records the model it came from as the extract stage's stores do; returns its seconds."""
        started = time.perf_counter()
        model_file = self.out_dir / outputs.MODEL
        info = {**self.model.config, "source": "bank", "round": self.config["round"],
                "sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
                "precision": "bf16" if self.dtype else "fp32"}
        assemble(BankSpec(Path(self.config["bank_layout"]), self.config["bank_dtype"]),
                 self.out_dir, self.ctx.world, info)
        return round(time.perf_counter() - started, 3)

    def _record(self, first: int, timing: dict) -> dict:
        plan, config = self.plan, self.config
        loop_s = timing["loop_s"]
        return {
            "steps": plan.steps, "samples": sum(plan.draws), "world_size": len(plan.draws),
            "batch_size": self.batch_size, "lr": self.lr,  # as trained ([train] batch_size = 0)
            "samples_per_rank": list(plan.draws), "n_labelled": int(self.sizes.sum()),
            "expected_samples": float(self.sizes.sum() * config["reassign"]),
            "passes": self.sampler.passes, "k": self.k,
            "cluster_draws": _draws_summary(self.tally.draws.numpy(), self.sizes,
                                            self.sampler.expected_draws),
            "loss_every": config["loss_every"], "loss_curve": self.loss_curve,
            "lr_first_last": [self._lr(0), self._lr(plan.steps - 1)],
            "final_loss": self.loss_curve[-1][1] if self.loss_curve else None,
            "resumed_from_step": first or None, "bn_batches": self.bn_batches,
            "timings": {**{k: round(v, 3) for k, v in timing.items() if k != "samples"},
                        "samples_this_run": timing["samples"],
                        "images_per_s": round(timing["samples"] / loop_s, 1) if loop_s else None,
                        "train_s_all_runs": round(self.elapsed_before + loop_s, 3)},
            "config": {k: v for k, v in config.items() if k != "shards"},
            "n_shards": len(config["shards"]),
        }


# ---------------------------------------------------------------- helpers
def _checked_k(shards: list[ShardInfo], labels_dir: Path) -> int:
    index = read_index(labels_dir)
    labelled = {s["name"] for s in index["shards"]}
    missing = [s.name for s in shards if s.name not in labelled]
    if missing:
        raise LabelsError(f"{labels_dir} has no labels for shards {missing[:5]}"
                          f"{' ...' if len(missing) > 5 else ''}: cluster this round's shards first")
    return int(index["k"])


# a moved workspace may still resume
PATHS = ("labels_dir", "model_path", "body_optim_path", "more_labels", "centroids", "bank_layout")


def _check_method(config: dict, model: ModelSpec) -> None:
    if config["method"] == "deepcluster-v2" and not (model.projection and config["centroids"]):
        raise SettingsError("deepcluster-v2 trains a model with a projection head ([model] "
                            "projection > 0) against the round's centroids")
    if config["method"] == "deepcluster" and model.projection:
        raise SettingsError("deepcluster (v1) trains a top layer on the penultimate features: "
                            "set [model] projection = 0, or [train] method = \"deepcluster-v2\"")


def _centroids(paths: list[str], labels_dirs: list, dim: int) -> list[torch.Tensor]:
    """Every head's centroids, checked to live in the projection's space (no PCA before) and to
    be the clusters its labels name: one file per label index, with that index's k rows (heads
    may differ in k: `[cluster] k_per_head`)."""
    if len(labels_dirs) != len(paths):
        raise SettingsError(f"{len(labels_dirs)} heads of labels but {len(paths)} centroid files")
    found = [torch.from_numpy(load_npy(p)).float() for p in paths]
    for path, labels_dir, c in zip(paths, labels_dirs, found):
        if c.dim() != 2 or c.shape[1] != dim:
            raise SettingsError(f"{path} holds {tuple(c.shape)} centroids, the projection has "
                                f"{dim} dims: cluster deepcluster-v2 rounds with [cluster] pca_dim = 0")
        k = int(read_index(labels_dir)["k"])
        if k != len(c):
            raise LabelsError(f"{labels_dir} labels {k} clusters but {path} holds {len(c)} "
                              "centroids: they are not one head's; cluster the round again")
    return found


def _check_same_config(saved: dict, config: dict, path: Path) -> None:
    changed = sorted(k for k in set(saved) | set(config)
                     if k not in PATHS and saved.get(k) != config.get(k))
    if changed:
        raise SettingsError(f"{path} was written with other settings ({', '.join(changed)}); "
                         "run with the same settings or delete the ckpt folder to start over")


def _check_model_matches(meta: dict, config: dict) -> None:
    for key in ("arch", "sobel", "input_size"):
        if meta[key] != config[key]:
            raise SettingsError(f"{config['model_path']} has {key}={meta[key]!r}, "
                             f"the round is configured with {config[key]!r}")


def _load_body_optimiser(body: torch.optim.SGD, config: dict, lr: float) -> None:
    """The previous round's body SGD state, with this round's hyperparameters."""
    path = config["body_optim_path"]
    try:
        body.load_state_dict(load_checked(path))
        for param in body.param_groups[0]["params"]:
            buffer = body.state[param].get("momentum_buffer")
            if buffer is not None and buffer.shape != param.shape:
                raise ValueError(f"momentum of shape {tuple(buffer.shape)} for a parameter of "
                                 f"shape {tuple(param.shape)}")
    except (ValueError, KeyError) as exc:
        raise FileFormatError(f"{path} does not fit this model's body parameters: {exc}") from exc
    for group in body.param_groups:
        group.update(lr=lr, momentum=config["momentum"],
                     weight_decay=config["weight_decay"])


def _load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    blob = load_checked(path)
    if blob.get("format") != CKPT_FORMAT:
        raise FileFormatError(f"{path}: not a dcpipe training checkpoint")
    return blob


def _same_labels(ckpt: dict | None, config: dict, path: Path) -> dict | None:
    """The checkpoint if it was trained on these very labels; None (start over) if not."""
    if ckpt is None or ckpt["config"].get("labels_sha256") == config["labels_sha256"]:
        return ckpt
    log.warning("%s was written for other labels (round %d was clustered again since): its "
                "training starts over", path, config["round"])
    return None


def _cpu_state(model) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _draws_summary(draws: np.ndarray, sizes: np.ndarray, expected: float) -> dict:
    nonempty = sizes > 0
    per = draws[nonempty]
    return {"clusters_nonempty": int(nonempty.sum()), "clusters_drawn": int((draws > 0).sum()),
            "target": round(expected / max(1, int(nonempty.sum())), 2),
            "min": int(per.min()), "median": float(np.median(per)), "max": int(per.max())}
