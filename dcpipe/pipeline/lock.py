"""One command at a time per workspace: a non-blocking flock that cron can rely on.

The kernel drops a flock when the last descriptor of its open file is closed, so the lock must
live only in the process that took it: forked children (DataLoader and shard workers) close
their inherited copy at once (os.register_at_fork), and exec'd ones never get it (descriptors
are non-inheritable). Otherwise a worker that outlives a SIGKILLed parent by seconds would
keep the workspace "busy" under a dead pid.

`shard --num-nodes N` runs share the workspace: each holds the workspace lock shared plus a
lock of its own node exclusively, so node runs exclude each other's rank, a plain `shard` and
every other locking command, which all take the workspace lock exclusively.

Across hosts (a workspace on a shared file system) the lock holds where flock does: Linux's NFS
client turns flock into NFS byte-range locks that every client sees (not with the mount options
`nolock` or `local_lock=flock|all`); Lustre needs `-o flock`. docs/distributed.md.
"""

import errno
import fcntl
import os
import socket
from contextlib import ExitStack, contextmanager
from pathlib import Path

from dcpipe.errors import DcpipeError

EXIT_BUSY = 75  # EX_TEMPFAIL: cron wrappers treat it as "try again later"

_held: set[int] = set()  # lock descriptors of this process, closed in every forked child


def _close_in_child() -> None:
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


class WorkspaceBusy(Exception):
    pass


class LocksUnsupported(DcpipeError):
    """The workspace's file system refuses flock (an NFS mount without a lock service)."""


NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


@contextmanager
def workspace_lock(path: Path, shared: bool = False, holder: str = ""):
    """Hold the flock on `path` (exclusive, or shared with other `shared` holders); the file
    names the holder's pid (and `holder`, what it is) for the busy message of whoever is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    _held.add(fd)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            named = os.pread(fd, 128, 0).decode(errors="replace").strip() or "unknown"
            raise WorkspaceBusy(f"workspace {path.parent} is busy: another dcpipe command "
                                f"(pid {named}) holds {path}") from None
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                raise
            raise LocksUnsupported(f"cannot lock {path}: its file system refuses file locks "
                                   f"({exc.strerror}); on NFS mount it with locking (not nolock "
                                   "or local_lock), see docs/distributed.md") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}{holder}".encode(), 0)
        yield
    finally:
        _held.discard(fd)
        os.close(fd)


def node_lock_path(workspace_lock_path: Path, node_rank: int) -> Path:
    return workspace_lock_path.with_name(f"{workspace_lock_path.name}.node{node_rank}")


@contextmanager
def shard_lock(workspace_lock_path: Path, node_rank: int, num_nodes: int):
    """A single-node `shard` holds the workspace; node `node_rank` of `num_nodes` shares it with
    the other nodes and holds its own rank alone."""
    if num_nodes == 1:
        with workspace_lock(workspace_lock_path):
            yield
        return
    with ExitStack() as stack:
        stack.enter_context(workspace_lock(workspace_lock_path, shared=True,
                                           holder=f", shard node {node_rank} of {num_nodes}"))
        stack.enter_context(workspace_lock(node_lock_path(workspace_lock_path, node_rank)))
        yield
