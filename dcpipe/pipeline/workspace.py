"""One directory, one collection and its rounds: where everything lives and what is done.

Whether a step of a round is done is read from the files themselves (each stage's completion
marker), never from a separate state file that could disagree with them.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from dcpipe.shards.atomic import atomic_write_json, read_json
from dcpipe.shards.reader import ShardInfo, list_shards

from dcpipe.pipeline import config as configuration

CONFIG_NAME = "dcpipe.toml"
ROUND_DIGITS = 4


class WorkspaceError(Exception):
    """A workspace that cannot be used as asked (missing round, no shards, ...)."""


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

    def round_dir(self, r: int) -> Path:
        return self.root / "rounds" / f"{r:0{ROUND_DIGITS}d}"

    def config(self) -> dict:
        return configuration.load(self.config_path)

    def init_config(self) -> bool:
        """Write the default dcpipe.toml if there is none; True if written."""
        if self.config_path.exists():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(configuration.dumps(configuration.defaults()))
        return True

    def rounds(self) -> list[int]:
        rounds_dir = self.root / "rounds"
        if not rounds_dir.is_dir():
            return []
        return sorted(int(p.name) for p in rounds_dir.iterdir() if p.name.isdigit())

    def round_shards(self, r: int) -> list[ShardInfo]:
        """The shards round r uses: fixed when the round starts, so later shards join round r+1."""
        path = self.round_dir(r) / "shards.json"
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
        return [available[n] for n in names]

    def step_done(self, r: int, step: str) -> bool:
        d = self.round_dir(r)
        if step == "extract":
            return (read_json(d / "features.zarr" / "zarr.json", {}).get("attributes", {})
                    .get("complete", False))
        if step == "cluster":
            return (d / "labels" / "index.json").exists() and (d / "clusters.json").exists()
        if step == "train":
            return (d / "train.json").exists()
        raise ValueError(step)
