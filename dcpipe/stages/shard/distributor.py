"""Runs shard tasks on worker processes, several shards at once in each, and hands the
results back in task order.

A shard is done only when its slowest download has ended, and a dead or stalled server holds
a row for (retries + 1) x timeout: a worker with one shard at a time sits idle through that
tail. Each worker therefore runs `shards_per_worker` shards at once (threads: they wait on the
network; decoding releases the GIL), taking tasks from one shared queue, so the next shards'
downloads and decodes go on while a shard waits for its last rows.

`workers == 1` runs the same threads in the calling process.
"""

import contextlib
import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections import deque

from dcpipe.errors import DcpipeError
from dcpipe.stages.shard.worker import process_shard

POLL_S = 1.0  # how often the main process checks that its workers still live


class WorkerFailed(RuntimeError):
    """A shard worker raised what no row-level check catches: a bug (exit 1, traceback)."""


class WorkerDied(DcpipeError):
    """A worker process was killed (e.g. by the kernel's OOM killer): nothing was lost."""


def _serve(tasks, results, shards_per_worker: int) -> None:
    """One worker: `shards_per_worker` threads each process whole shards until told to stop."""
    def serve():
        while (task := tasks.get()) is not None:
            try:
                results.put((task.index, process_shard(task), None))
            except BaseException:  # its traceback goes back as text: any exception pickles
                results.put((task.index, None, traceback.format_exc()))

    threads = [threading.Thread(target=serve) for _ in range(shards_per_worker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _worker_main(tasks, results, shards_per_worker: int, parent: int) -> None:
    _exit_with_parent(parent)
    _serve(tasks, results, shards_per_worker)


def _exit_with_parent(parent: int) -> None:
    """A worker whose main process was killed (kill -9) exits within a second, instead of
    finishing shards nobody will write (minutes of downloads). `parent` is the main's pid as
    the main saw it: one killed while this worker was still starting is gone already."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class Distributor:
    """`results(tasks)` -> (task, ShardResult) in task order. A context manager, entered before
    planning so that the workers' imports overlap it."""

    def __init__(self, workers: int, shards_per_worker: int):
        self.slots = workers * shards_per_worker
        # one queued task a worker beyond those running, so none idles while results are read
        self.window = self.slots + workers
        if workers == 1:
            self.todo, self.done = queue.Queue(), queue.Queue()
            self.runners = [threading.Thread(target=_serve, daemon=True,
                                           args=(self.todo, self.done, shards_per_worker))]
        else:
            ctx = multiprocessing.get_context("spawn")
            self.todo, self.done = ctx.Queue(), ctx.Queue()
            self.runners = [ctx.Process(target=_worker_main, daemon=True,
                                      args=(self.todo, self.done, shards_per_worker, os.getpid()))
                          for _ in range(workers)]
        for runner in self.runners:  # worker processes, or one thread with workers == 1
            runner.start()

    def results(self, tasks):
        """Issues at most `window` tasks beyond the oldest one not yet yielded (bounded memory)."""
        tasks, pending, ready = iter(tasks), deque(), {}
        while True:
            while len(pending) < self.window and (task := next(tasks, None)) is not None:
                self.todo.put(task)
                pending.append(task)
            if not pending:
                return
            oldest = pending.popleft()
            while oldest.index not in ready:
                index, result = self._receive()
                ready[index] = result
            yield oldest, ready.pop(oldest.index)

    def _receive(self):
        while True:
            try:
                index, result, failure = self.done.get(timeout=POLL_S)
            except queue.Empty:
                self._check_alive()
                continue
            if failure is not None:
                raise WorkerFailed(f"shard {index} failed in its worker:\n{failure}")
            return index, result

    def _check_alive(self) -> None:
        for runner in self.runners:
            if not runner.is_alive():
                code = getattr(runner, "exitcode", None)
                raise WorkerDied(f"a shard worker process died (exit code {code}; -9 is a kill, "
                                 "often the OOM killer): shards written so far are kept, run "
                                 "the same command again to go on")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stops idle workers; workers still busy (after an error) are terminated. Tasks not
        yet taken are dropped first: after an error nobody would write their shards."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.todo.get_nowait()
        for _ in range(self.slots):
            self.todo.put(None)
        for runner in self.runners:
            runner.join(timeout=POLL_S)
            if runner.is_alive() and hasattr(runner, "terminate"):
                runner.terminate()
                runner.join()
