"""The worker side of the shard stage: one planned shard's rows -> processed samples or rejects.

`process_shard` is a plain top-level function of picklable arguments, so it runs the same in
threads of the main process (workers=1) and of worker processes (`distributor.py`). It writes
nothing: the main process writes the shard in order (see `stages.shard`), which keeps
de-duplication deterministic.
"""

import itertools
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from dcpipe.shards.naming import make_key, sanitize_key

from dcpipe.stages.sources.connections import Connections
from dcpipe.stages.sources.fetch import RETRIES, FetchError, fetch
from dcpipe.stages.shard.resizer import ImageRejected, Limits, process_image
from dcpipe.stages.sources.tables import Row

UNEXPECTED = "unexpected_error"  # the reject reason of an error no check foresaw


@dataclass(frozen=True)
class FetchOptions:
    timeout: float
    max_bytes: int
    threads: int = 1  # downloads of a shard in flight at once (they wait on the network)
    public_only: bool = False  # refuse local sources and non-global addresses
    retries: int = RETRIES  # more attempts for a 5xx, a timeout, a dropped connection


@dataclass
class ShardTask:
    index: int
    row_start: int
    row_end: int
    rows: list[Row]
    limits: Limits
    fetch: FetchOptions


@dataclass
class Outcome:
    """One row's result: a sample (`jpeg` and `meta`) or a reject (`reason`)."""

    row: int
    source: str | None
    key: str | None
    jpeg: bytes | None = None
    meta: dict | None = None
    reason: str | None = None
    detail: str = ""
    seconds: tuple = (0.0, 0.0)  # fetching, processing
    attempts: int | None = None  # downloads tried, for a row whose download failed


@dataclass
class ShardResult:
    index: int
    outcomes: list[Outcome]
    timings: dict = field(default_factory=dict)


def sample_key(task: ShardTask, row: Row) -> str:
    """The row's key: from the key column (made safe) or shard index + row within the shard."""
    if row.key is not None:
        return sanitize_key(row.key)
    return make_key(task.index, row.row - task.row_start)


def _sample_meta(row: Row, key: str, p) -> dict:
    meta = {"key": key, "source": row.recorded_source, "row": row.row, "width": p.width,
            "height": p.height, "original_width": p.original_width,
            "original_height": p.original_height, "original_format": p.original_format,
            "sha256": p.sha256}
    if row.label is not None:
        meta["label"] = row.label
    if row.meta:
        meta["meta"] = row.meta
    return meta


def fetch_row(task: ShardTask, row: Row, connections: Connections):
    """(key, bytes, seconds) of a row, or its reject Outcome. Runs in a fetching thread."""
    if row.reject:
        return Outcome(row.row, row.recorded_source, None, reason=row.reject, detail=row.detail)
    try:
        key = sample_key(task, row)
    except ValueError as exc:
        return Outcome(row.row, row.recorded_source, None, reason="bad_key", detail=str(exc))
    start = time.perf_counter()
    opts = task.fetch
    try:
        data = fetch(row.source, timeout=opts.timeout, max_bytes=opts.max_bytes,
                     public_only=opts.public_only, retries=opts.retries,
                     connections=connections)
    except Exception as exc:  # whatever one row does, it ends as that row's reject
        failed = exc if isinstance(exc, FetchError) else FetchError(UNEXPECTED, repr(exc))
        return Outcome(row.row, row.recorded_source, key, reason=failed.reason, detail=failed.detail,
                       seconds=(time.perf_counter() - start, 0.0), attempts=failed.attempts)
    return key, data, time.perf_counter() - start


def process_row(task: ShardTask, row: Row, fetched) -> Outcome:
    """The row's sample or reject, from what `fetch_row` returned."""
    if isinstance(fetched, Outcome):
        return fetched
    key, data, fetch_s = fetched
    start = time.perf_counter()
    try:
        processed = process_image(data, task.limits)
        outcome = Outcome(row.row, row.recorded_source, key, processed.jpeg,
                          _sample_meta(row, key, processed))
    except ImageRejected as exc:
        outcome = Outcome(row.row, row.recorded_source, key, reason=exc.reason, detail=exc.detail)
    except Exception as exc:  # one odd file must not take the shard down: record it instead
        outcome = Outcome(row.row, row.recorded_source, key, reason=UNEXPECTED, detail=repr(exc))
    outcome.seconds = (fetch_s, time.perf_counter() - start)
    return outcome


def _fetched(task: ShardTask):
    """(row, fetch_row result) as the downloads finish, not in row order: a row waiting on a
    slow or dead server (up to (retries + 1) x timeout) holds one thread, while the rows
    fetched meanwhile are decoded. `threads` fetches run, reusing each other's kept-alive
    connections; at most 2 x threads rows are in flight (bodies wait in memory)."""
    rows, in_flight = iter(task.rows), {}  # future -> its row
    with Connections() as connections, ThreadPoolExecutor(task.fetch.threads) as pool:
        def submit(row):
            in_flight[pool.submit(fetch_row, task, row, connections)] = row

        for row in itertools.islice(rows, 2 * task.fetch.threads):
            submit(row)
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                row = in_flight.pop(future)
                if (following := next(rows, None)) is not None:
                    submit(following)
                yield row, future.result()


def process_shard(task: ShardTask) -> ShardResult:
    """Fetches run in `fetch.threads` threads (they wait on the network or the disk); images
    are decoded and encoded in this thread, one at a time: CPU work gains nothing from more
    threads in one process (measured: 8 threads were 25% slower than 1 on local files).

    `fetch_s` and `process_s` add up the time of every row; `worker_s` is wall time.
    """
    start = time.perf_counter()
    outcomes = sorted((process_row(task, row, fetched) for row, fetched in _fetched(task)),
                      key=lambda o: o.row)
    timings = {"fetch_s": sum(o.seconds[0] for o in outcomes),
               "process_s": sum(o.seconds[1] for o in outcomes),
               "worker_s": time.perf_counter() - start}
    return ShardResult(task.index, outcomes, {k: round(v, 3) for k, v in timings.items()})
