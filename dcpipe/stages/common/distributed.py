"""torch.distributed for every stage: rank and world from torchrun's environment, one bootstrap,
one timeout, one rank-zero check.

Alone (WORLD_SIZE unset or 1) everything is a no-op. Under torchrun the group is started once
(gloo on CPU, NCCL on GPU) by whoever needs it first and lives until the process exits.
"""
import atexit
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


def local_world_size() -> int:
    """Ranks on this host (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    return rank() == 0


class ProcessGroup:
    """This process's place among the ranks; `start()` joins torch.distributed when world > 1."""

    def __init__(self, rank_: int, world: int):
        self.rank, self.world = rank_, world

    @classmethod
    def start(cls) -> "ProcessGroup":
        """Joins the group, once per process: the group then serves every later stage of the
        process (`dcpipe cluster` extracting first, `dcpipe run`) and is destroyed at exit. A
        group destroyed and started again in one torchrun job can meet the old group's
        addresses in torchrun's store, and gloo then fails to connect."""
        r, world = rank(), world_size()
        if not 0 <= r < max(world, 1):
            raise SettingsError(f"RANK {r} outside WORLD_SIZE {world}")
        if world <= 1:
            return cls(0, 1)  # without importing torch: the cluster stage alone needs none
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(local_rank())  # NCCL's collectives run on the current device
            dist.init_process_group("nccl" if cuda else "gloo", rank=r, world_size=world,
                                    timeout=TIMEOUT)
            atexit.register(dist.destroy_process_group)
        return cls(r, world)

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
        result = error = None
        if self.rank == 0:
            try:
                result = decide()
            except Exception as exc:
                error = exc
        result, error = self.broadcast_object((result, error))  # pickled between our own ranks only
        if error is not None:
            raise error
        return result

    def sum(self, tensor):
        """`tensor` summed over ranks (the tensor itself alone)."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        moved = tensor.to(self.device)
        dist.all_reduce(moved)
        return moved.to(tensor.device)

    # numpy arrays (C-contiguous, writable) are combined in place and returned
    def reduce_array(self, array, op: str = "sum"):
        """Element-wise sum or max of every rank's `array`, on every rank."""
        if self.world == 1:
            return array
        import torch.distributed as dist

        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        return self._in_place(array, lambda t: dist.all_reduce(t, op=reduce_op))

    def broadcast_array(self, array):
        """Rank 0's `array` into every rank's (same shape and dtype)."""
        if self.world == 1:
            return array
        import torch.distributed as dist

        return self._in_place(array, lambda t: dist.broadcast(t, src=0))

    def gather_rows(self, part, full, spans: list[tuple[int, int]]) -> None:
        """Rank r's `part` into rows spans[r] of rank 0's `full` (rank 0's own part is in
        place already; other ranks pass full=None)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if self.rank == 0:
            for r, (first, stop) in enumerate(spans[1:], start=1):
                if stop > first:
                    self._in_place(full[first:stop], lambda t, r=r: dist.recv(t, src=r))
        elif len(part):
            self._in_place(part, lambda t: dist.send(t, dst=0))

    def all_gather_object(self, obj) -> list:
        """Every rank's (picklable) `obj`, in rank order."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's (picklable) `obj` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _in_place(self, array, collective):
        import torch

        tensor = torch.from_numpy(array)  # shares the array's memory
        moved = tensor.to(self.device)  # NCCL works on the GPU's copy
        collective(moved)
        if moved is not tensor:
            tensor.copy_(moved.cpu())
        return array
