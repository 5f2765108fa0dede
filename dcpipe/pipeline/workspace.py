"""One directory, one collection and its rounds: where everything lives and what is done.

This module owns the workspace's names; each stage owns the names of what it writes into a
round directory (its `outputs` module) and says whether that is complete. Whether a step of a
round is done is read from those files themselves, never from a separate state file that could
disagree with them.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from dcpipe.errors import DcpipeError
from dcpipe.pipeline import config as configuration
from dcpipe.shards.atomic import atomic_write_json, read_json
from dcpipe.shards.reader import ShardInfo, list_shards, missing_or_short
from dcpipe.stages.cluster import outputs as cluster_outputs
from dcpipe.stages.evaluate import outputs as eval_outputs
from dcpipe.stages.extract import outputs as extract_outputs
from dcpipe.stages.train import outputs as train_outputs

CONFIG_NAME = "dcpipe.toml"
ROUND_DIGITS = 4
STEP_OUTPUTS = {"extract": extract_outputs, "cluster": cluster_outputs, "train": train_outputs}
STEPS = tuple(STEP_OUTPUTS)


class WorkspaceError(DcpipeError):
    """A workspace that cannot be used as asked (missing round, no shards, ...)."""


@dataclass(frozen=True)
class RoundDir:
    """rounds/RRRR: round `index`'s files, by what they are."""
    path: Path
    index: int

    @property
    def config_record(self) -> Path:
        return self.path / "config.json"  # the config each step ran with

    @property
    def shard_list(self) -> Path:
        return self.path / "shards.json"  # the shards the round uses, fixed when it starts

    @property
    def features(self) -> Path:
        return self.path / extract_outputs.FEATURES

    @property
    def labels(self) -> Path:
        return self.path / cluster_outputs.LABELS

    def head_labels(self, head: int) -> Path:
        return self.path / cluster_outputs.labels_folder(head)

    def head_centroids(self, head: int) -> Path:
        return self.path / cluster_outputs.centroids_file(head)

    @property
    def clusters_record(self) -> Path:
        return self.path / cluster_outputs.RECORD

    @property
    def model(self) -> Path:
        return self.path / train_outputs.MODEL

    @property
    def bank(self) -> Path:
        return self.path / train_outputs.BANK  # round r+1's features, made by round r's training

    @property
    def body_optimiser(self) -> Path:
        return self.path / train_outputs.BODY_OPTIMISER

    @property
    def train_record(self) -> Path:
        return self.path / train_outputs.RECORD

    @property
    def eval_record(self) -> Path:
        return self.path / eval_outputs.RECORD

    def done(self, step: str) -> bool:
        return STEP_OUTPUTS[step].is_complete(self.path)

    def started(self, step: str) -> bool:
        """Whether the step left anything here, complete or not."""
        return STEP_OUTPUTS[step].has_outputs(self.path)


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, path=None) -> "Workspace":
        return cls(Path(path or os.environ.get("DCPIPE_WORKSPACE") or ".").resolve())

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @property
    def rounds_dir(self) -> Path:
        return self.root / "rounds"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def round(self, r: int) -> RoundDir:
        return RoundDir(self.rounds_dir / f"{r:0{ROUND_DIGITS}d}", r)

    def config(self) -> configuration.Config:
        return configuration.load(self.config_path)

    def init_config(self, method: str = configuration.DEFAULT_METHOD) -> bool:
        """Write the commented default dcpipe.toml (naming `method`) if there is none; True if
        written."""
        if self.config_path.exists():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(configuration.template(method))
        return True

    def rounds(self) -> list[RoundDir]:
        """The rounds that have a directory, in order."""
        if not self.rounds_dir.is_dir():
            return []
        found = sorted(int(p.name) for p in self.rounds_dir.iterdir()
                       if p.name.isdigit() and len(p.name) == ROUND_DIGITS)
        return [self.round(r) for r in found]

    def round_shards(self, r: int) -> list[ShardInfo]:
        """The shards round r uses: fixed when the round starts, so later shards join round r+1.

        A missing or short tar among them stops the round here, before any work (its rows must
        not silently drop out); the stages verify each tar's digest as they read it."""
        path = self.round(r).shard_list
        names = read_json(path)
        available = {s.name: s for s in list_shards(self.shards_dir)}
        if names is None:
            if not available:
                raise WorkspaceError(f"no shards in {self.shards_dir}: run `dcpipe shard --src ...` first")
            names = list(available)
            atomic_write_json(path, names)
        missing = [n for n in names if n not in available]
        if missing:
            raise WorkspaceError(f"round {r} uses shards that are gone from {self.shards_dir}: {missing[:5]}")
        shards = [available[n] for n in names]
        damaged = missing_or_short(shards)
        if damaged:
            raise WorkspaceError(f"round {r} cannot use its shards: {'; '.join(damaged[:5])}"
                                 f"{' ...' if len(damaged) > 5 else ''} (restore them, or run "
                                 "`dcpipe verify` for the whole list)")
        return shards

    def step_done(self, r: int, step: str) -> bool:
        return self.round(r).done(step)
