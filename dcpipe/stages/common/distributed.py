"""torch.distributed for every stage: rank and world from torchrun's environment, one bootstrap,
one timeout, one rank-zero check.

Alone (WORLD_SIZE unset or 1) everything is a no-op. Under torchrun the group is started once
(gloo on CPU, NCCL on GPU) by whoever needs it first and closed by whoever started it.
"""
import os
from datetime import timedelta

from dcpipe.errors import SettingsError

# Ranks wait at a stage's last barrier for the slowest one, which on a web-scale shard set can be
# hours behind. A rank that dies is torchrun's to handle (it stops the others); the timeout only
# bounds a rank that hangs.
TIMEOUT = timedelta(hours=12)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_rank_zero() -> bool:
    return rank() == 0


class ProcessGroup:
    """This process's place among the ranks; `start()` joins torch.distributed when world > 1."""

    def __init__(self, rank_: int, world: int, owned: bool):
        self.rank, self.world, self.owned = rank_, world, owned

    @classmethod
    def start(cls) -> "ProcessGroup":
        """Join the ranks (usable as `with ProcessGroup.start() as group:`, which closes it)."""
        r, world = rank(), world_size()
        if not 0 <= r < max(world, 1):
            raise SettingsError(f"RANK {r} outside WORLD_SIZE {world}")
        if world <= 1:
            return cls(0, 1, False)  # alone: no torch import (a no-op cron run stays cheap)
        import torch
        import torch.distributed as dist

        owned = not dist.is_initialized()
        if owned:
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(local_rank())  # NCCL's collectives run on the current device
            dist.init_process_group("nccl" if cuda else "gloo", rank=r, world_size=world,
                                    timeout=TIMEOUT)
        return cls(r, world, owned)

    @property
    def device(self):
        import torch

        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def from_rank_zero(self, decide):
        """`decide()` run on rank 0 alone, its result (or the exception it raised) given to every
        rank: decisions read from files are taken once, so ranks on hosts whose views of a shared
        file system lag cannot take different ones, and rank 0's writes in it happen once."""
        if self.world == 1:
            return decide()
        import torch.distributed as dist

        outcome = [None, None]
        if self.rank == 0:
            try:
                outcome[0] = decide()
            except Exception as exc:
                outcome[1] = exc
        dist.broadcast_object_list(outcome, src=0)  # pickled between our own ranks only
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]

    def sum(self, tensor):
        """`tensor` summed over ranks (the tensor itself alone)."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        moved = tensor.to(self.device)
        dist.all_reduce(moved)
        return moved.to(tensor.device)

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
