"""`dcpipe verify`: every stored file of a workspace checked against what was recorded for it.

Shards: size and sha256 against the manifest (the whole tar is read). Per round: the feature
store (every chunk of every committed shard read: present, checksum), each label index (every
shard's files against index.json's digests), and model.pt, optim_body.pt and the training
checkpoint (contents against the digest they carry). Files written before dcpipe recorded
these digests (a format-1 store, an index or .pt without digests) pass unverified.
"""
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from dcpipe.pipeline.workspace import RoundDir, Workspace
from dcpipe.shards.reader import list_shards, verify_shard
from dcpipe.stages.cluster import outputs as cluster_outputs
from dcpipe.stages.common.digests import verify_file
from dcpipe.stages.common.featurestore import verify_store
from dcpipe.stages.common.labels import INDEX, verify_labels
from dcpipe.stages.train import outputs as train_outputs


@dataclass
class Verification:
    checked: Counter = field(default_factory=Counter)  # files checked, by kind
    problems: list = field(default_factory=list)  # one line per damaged or missing file

    def add(self, kind: str, problems) -> None:
        self.checked[kind] += 1
        self.problems += [p for p in problems if p]

    def summary(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in self.checked.items()) or "nothing"


def verify(ws: Workspace, progress: bool = True) -> Verification:
    result = Verification()
    shards = list_shards(ws.shards_dir) if ws.shards_dir.is_dir() else []
    for shard in tqdm(shards, desc="verify shards", unit="shard", disable=not progress):
        result.add("shards", [verify_shard(shard)])
    for rd in tqdm(ws.rounds(), desc="verify rounds", unit="round", disable=not progress):
        _verify_round(rd, result)
    return result


def _verify_round(rd: RoundDir, result: Verification) -> None:
    if (rd.features / "zarr.json").exists():
        result.add("feature stores", verify_store(rd.features))
    for labels in (rd.labels, *sorted(rd.path.glob(f"{cluster_outputs.LABELS}.*"))):
        if (labels / INDEX).exists():
            result.add("label indexes", verify_labels(labels))
    for path in (rd.model, rd.body_optimiser, rd.path / train_outputs.CHECKPOINT):
        if path.exists():
            result.add("model files", [verify_file(path)])
