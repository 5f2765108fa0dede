"""Files that other stages read appear whole or not at all: temp name, fsync, rename.

A temp file is named `.<name>.<pid>.<random>.tmp` (or `.partial`) after the file it becomes
and the process writing it, so that `remove_stale_temps` can tell the debris of a killed or
failed writer (pid gone) from a file still being written. Temp files are created with mode
0666 and the umask, like any other file: mkstemp's fixed 0600 kept a cron user's store, model
and clusters.json from another account.
"""

import errno
import json
import os
import re
import secrets
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from dcpipe.errors import DcpipeError

NO_ROOM = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
           errno.EFBIG: "file size limit reached"}
_TEMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.(tmp|partial)$")


class DiskFull(DcpipeError):
    """No room left for a file being written (disk full, quota, file size limit)."""


def no_room(exc: BaseException, path) -> DiskFull | None:
    """The DiskFull that `exc` means while writing `path`, or None if it means something else."""
    if isinstance(exc, OSError) and exc.errno in NO_ROOM:
        return DiskFull(f"{NO_ROOM[exc.errno]} while writing {path}: free some space and run "
                        "the same command again")
    return None


def temp_path(path: Path, kind: str = "tmp") -> Path:
    """A fresh temp name beside `path` that names this process (see remove_stale_temps)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a run before ours had our pid; we have written nothing yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another account's live process
    return True


def remove_stale_temps(root: Path) -> list[Path]:
    """Delete the temp files under `root` whose writer is gone; returns them. Call it at the
    start of a command, before this process writes any."""
    removed = []
    for folder, _, files in os.walk(root):
        for name in files:
            match = _TEMP.match(name)
            if match and not _pid_alive(int(match.group(1))):
                path = Path(folder) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp_path: Path, final_path: Path) -> None:
    """fsync a finished temp file, rename it into place and make the rename durable."""
    with open(tmp_path, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp_path, final_path)
    fsync_dir(Path(final_path).parent)


class _WatchedFile:
    """A write-only file that keeps the OSError a write raised: torch.save turns it into
    "unexpected pos", losing the cause (disk full)."""

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self):
        self._f.flush()


@contextmanager
def ctrl_c_deferred():
    """Ctrl-C during the block is raised when it ends. A KeyboardInterrupt raised inside a write
    that C++ called (torch.save) leaves its writer to fail with "unexpected pos" instead, so an
    interrupted checkpoint exited 1 with a traceback. Only the main thread receives signals, and
    a SIGINT already ignored (a background job) or handled otherwise is left alone."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def atomic_write_with(path, write) -> None:
    """Call `write(f)` on a temp file beside `path`, then publish it as `path`. No room on the
    way raises DiskFull naming `path`, and leaves no temp file. Ctrl-C waits for the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ctrl_c_deferred():
        _write_and_publish(path, write)


def _write_and_publish(path: Path, write) -> None:
    tmp = temp_path(path)
    watched = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as f:
            watched = _WatchedFile(f)
            write(watched)
        publish(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        full = no_room(exc, path) or (watched and watched.error and no_room(watched.error, path))
        if full:
            raise full from exc
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path, default=None):
    """The JSON at `path`, or `default` when the file does not exist."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
