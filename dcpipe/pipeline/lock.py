"""One command at a time per workspace: a non-blocking flock that cron can rely on.

The kernel drops a flock when its holder dies, so a SIGKILLed run never leaves a stale lock.
"""

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

EXIT_BUSY = 75  # EX_TEMPFAIL: cron wrappers treat it as "try again later"


class WorkspaceBusy(Exception):
    pass


@contextmanager
def workspace_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise WorkspaceBusy(f"workspace {path.parent} is busy: another dcpipe command "
                                f"(pid {holder}) holds {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
