"""`dcpipe shard` on a YFCC100M-format file against a local web that fails like a real crawl.

    python benchmarks/bench_crawl.py --rows 20000 --kill-at 0.5 [--work DIR] [--timeout 2]

The source (`crawl_source.py`): `--rows` lines of the 25-field YFCC100M format whose URLs point
at `crawl_server.py`, a separate process serving the real photos of shared/datasets/photos from
memory behind one URL per row, with about a third of the URLs dead and the rest of a crawl's
trouble mixed in (see `crawl_source.MIX`). dcpipe runs as a user runs it, `dcpipe shard --src
FILE --format yfcc100m --timeout T` with every other setting at its default, as a fresh
process group, while this script samples the group's RSS and the manifest's row count.

Runs (each in its own workspace under --work):
  uninterrupted  a clean run (skip with --skip-uninterrupted when it was run before with the
                 same --work, --rows and --seed; --drop-tars deletes its tars once checked)
  killed         SIGKILL of the whole process group once `--kill-at` of the rows are recorded
  rerun          the same command again, to the end; its tars must equal the clean run's
  no-op          the same command once more: every row is already sharded
Then, from the files alone: samples (tar members) + rejects (records) == rows, every row exactly
once; tar bytes of the two workspaces identical (sha256); disk per million rows. With
`--kill-at 0` only the uninterrupted run and its no-op rerun.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
import crawl_checks  # noqa: E402
import crawl_source  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "photos"
SERVER = Path(__file__).with_name("crawl_server.py")
DCPIPE = str(Path(sys.executable).parent / "dcpipe")
MILESTONES = (0.10, 0.25, 0.50, 0.75, 1.00)
MIB = 1 << 20


@dataclass
class Record:
    label: str
    rows_before: int = 0  # rows already in the manifest when the run started
    rows_after: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0  # dcpipe's processes (main + reaped workers)
    server_cpu_s: float = 0.0
    rss: list = field(default_factory=list)  # (manifest rows, RSS of main, of its workers)
    hwm: dict = field(default_factory=dict)  # pid -> peak RSS the kernel saw (VmHWM)
    stats: dict | None = None  # what the command printed (--json); None when killed


class ManifestRows:
    """Rows recorded in a workspace's manifest, read incrementally (only new lines)."""

    def __init__(self, shards_dir: Path):
        self.path, self.offset, self.rows = shards_dir / crawl_checks.MANIFEST, 0, 0

    def poll(self) -> int:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            self.offset += len(complete)
            self.rows += sum(json.loads(line)["rows"] for line in complete.splitlines())
        return self.rows


def _group(pid: int) -> list[psutil.Process]:
    try:
        main = psutil.Process(pid)
        return [main] + main.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _vm_hwm(pid: int) -> int:
    """Peak RSS in bytes; 0 for a process that is exiting (its status has no memory lines)."""
    with open(f"/proc/{pid}/status") as f:
        line = next((line for line in f if line.startswith("VmHWM:")), None)
    return int(line.split()[1]) * 1024 if line else 0


def _sample(record: Record, pid: int, rows: int) -> None:
    rss = {}
    for p in _group(pid):
        try:
            rss[p.pid] = p.memory_info().rss
            record.hwm[p.pid] = max(record.hwm.get(p.pid, 0), _vm_hwm(p.pid))
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            pass
    if rss:
        main = rss.pop(pid, 0)
        record.rss.append((rows, main, sum(rss.values())))


PASSED = ("threads", "workers", "shards_per_worker")  # dcpipe settings this script passes on


def passed_settings(opts) -> list[str]:
    """dcpipe's flags for the PASSED settings given to this script (others: dcpipe's default)."""
    flags = []
    for name in PASSED:
        if getattr(opts, name) is not None:
            flags += [f"--{name.replace('_', '-')}", str(getattr(opts, name))]
    return flags


def run_shard(label: str, ws: Path, src: Path, opts, server: psutil.Process,
              kill_at_rows: int | None = None) -> Record:
    """One `dcpipe shard` in its own process group, sampled every --sample-s; SIGKILL of the
    group once the manifest holds `kill_at_rows` rows."""
    progress = ManifestRows(ws / "shards")
    record = Record(label, rows_before=progress.poll())
    cmd = [DCPIPE, "-q", "-w", str(ws), "shard", "--src", str(src), "--format", "yfcc100m",
           "--timeout", str(opts.timeout), "--json"]
    cmd += passed_settings(opts)
    server_cpu = sum(server.cpu_times()[:2])
    start = time.perf_counter()
    with open(ws / f"{label}.stderr", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rows = progress.poll()
        _sample(record, proc.pid, rows)
        if kill_at_rows is not None and rows >= kill_at_rows:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(opts.sample_s)
    record.seconds = time.perf_counter() - start
    record.cpu_s = usage.ru_utime + usage.ru_stime
    record.server_cpu_s = sum(server.cpu_times()[:2]) - server_cpu
    record.rows_after = progress.poll()
    out = proc.stdout.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if kill_at_rows is None:
        if code != 0:
            raise RuntimeError(f"{label}: dcpipe shard exited {code}: see {ws / label}.stderr")
        record.stats = json.loads(out)
    _wait_group_gone(proc.pid)
    return record


def _wait_group_gone(pgid: int, limit_s: float = 30.0) -> None:
    """Workers of a killed main exit on their own; the next run must not meet them."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        alive = [p for p in psutil.process_iter(["status"])
                 if _pgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.1)
    raise RuntimeError(f"processes of group {pgid} still alive after {limit_s} s")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_source(work: Path, opts, n_photos: int) -> dict:
    """The source file and its ports, reused from an earlier run with the same rows and seed
    (its URLs name the ports, so the server must listen where they point)."""
    meta_path, src = work / "source.json", work / "yfcc100m_dataset"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if (meta["rows"], meta["seed"], meta["photos"], meta["healthy"]) == (
                opts.rows, opts.seed, n_photos, opts.healthy):
            return meta
        raise SystemExit(f"{work} holds another source ({meta['rows']} rows, seed "
                         f"{meta['seed']}, healthy {meta['healthy']}): use another --work")
    meta = {"rows": opts.rows, "seed": opts.seed, "photos": n_photos, "port": _free_port(),
            "dead_port": _free_port(), "path": str(src), "healthy": opts.healthy}
    mix = crawl_source.HEALTHY if opts.healthy else crawl_source.MIX
    meta["kinds"] = crawl_source.write_source(src, opts.rows, opts.seed, n_photos, meta["port"],
                                              meta["dead_port"], mix)
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def refused_port(port: int) -> socket.socket:
    """A socket bound to `port` but not listening: connections to it are refused, and nothing
    else can take the port while the benchmark runs."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    return s


def start_server(photos: Path, port: int, stall_s: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(SERVER), "--photos", str(photos), "--port",
                             str(port), "--stall-s", str(stall_s)], stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"crawl server did not start on port {port}")
    return proc


def run_all(work: Path, opts, meta: dict, server: psutil.Process) -> tuple[list, dict]:
    """The runs, then each complete workspace's checks (an earlier run's, when skipped)."""
    src, rows = Path(meta["path"]), meta["rows"]
    records, checks = [], {}
    clean = work / "uninterrupted"
    if not opts.skip_uninterrupted:
        records.append(run_shard("uninterrupted", _fresh(clean), src, opts, server))
        if not opts.kill_at:
            records.append(run_shard("no-op", clean, src, opts, server))
        crawl_checks.check_workspace(clean, rows)
        if opts.drop_tars:
            for tar in (clean / "shards").glob("*.tar"):
                tar.unlink()
    if (saved := crawl_checks.saved_checks(clean)) is not None:
        checks["uninterrupted"] = saved
    if opts.kill_at:
        killed = _fresh(work / "killed")
        records.append(run_shard("killed", killed, src, opts, server,
                                 kill_at_rows=int(opts.kill_at * rows)))
        if records[-1].rows_after >= rows:
            print("warning: every row was recorded before the kill; the kill test proves "
                  "nothing at this size (use more rows or a smaller --kill-at)")
        records.append(run_shard("rerun", killed, src, opts, server))
        records.append(run_shard("no-op", killed, src, opts, server))
        checks["killed + rerun"] = crawl_checks.check_workspace(killed, rows)
    return records, checks


def _fresh(ws: Path) -> Path:
    if ws.exists():
        subprocess.run(["rm", "-rf", str(ws)], check=True)
    ws.mkdir(parents=True)
    return ws


def _rss_by_stretch(record: Record, rows: int) -> list[float | None]:
    """Peak summed RSS (MiB) of the samples taken while the manifest held from one milestone's
    rows up to the next (0-10%, 10-25%, ... 75-100%, that is while working towards it);
    None where no sample fell (a run that started past it, or a stretch shorter than one
    shard)."""
    peaks, low = [], 0.0
    for m in MILESTONES:
        inside = [(main + workers, main, workers) for r, main, workers in record.rss
                  if low * rows <= r < m * rows]
        peaks.append(tuple(v / MIB for v in max(inside)) if inside else None)
        low = m
    return peaks


def print_runs(records: list[Record], rows: int, opts) -> None:
    flags = " ".join(passed_settings(opts))
    threads = f"{flags}, " if flags else ""
    print(f"\ndcpipe shard, {rows} YFCC100M rows, --timeout {opts.timeout}, {threads}other "
          f"settings default; {os.cpu_count()} cores shared with the server")
    print(f"{'run':<14} {'rows':>8} {'written':>8} {'rejected':>8} {'seconds':>8} "
          f"{'rows/s':>7} {'img/s':>7} {'peakRSS':>8} {'dcpipe CPU':>10} {'server CPU':>10}")
    for r in records:
        done = r.rows_after - r.rows_before
        written = r.stats["written"] if r.stats else None
        cores = os.cpu_count() * r.seconds
        print(f"{r.label:<14} {done:>8} {written if written is not None else '-':>8} "
              f"{r.stats['rejected'] if r.stats else '-':>8} {r.seconds:>8.1f} "
              f"{done / r.seconds:>7.1f} "
              f"{(f'{written / r.seconds:.1f}' if written is not None else '-'):>7} "
              f"{max((a + b for _, a, b in r.rss), default=0) / MIB:>7.0f}M "
              f"{f'{100 * r.cpu_s / cores:.0f}%' if r.stats else '-':>10} "
              f"{100 * r.server_cpu_s / cores:>9.1f}%")
    print("(rows: rows recorded during the run; CPU: share of all cores over the run's wall "
          "time, '-' for the killed run whose workers nobody reaps; peakRSS: highest sample of "
          "RSS summed over the run's processes)")


def print_rss(records: list[Record], rows: int) -> None:
    print("\nRSS of the shard processes, MiB, main + workers (summed): the highest sample "
          "while working towards each share of the rows")
    print(f"{'run':<14} " + " ".join(f"{f'{m:.0%}':>15}" for m in MILESTONES)
          + f" {'sum of VmHWM':>13}")
    for r in records:
        if r.label == "no-op":
            continue
        cells = [f"{f'{p[0]:.0f} ({p[1]:.0f}+{p[2]:.0f})':>15}" if p is not None else f"{'-':>15}"
                 for p in _rss_by_stretch(r, rows)]
        print(f"{r.label:<14} " + " ".join(cells) + f" {sum(r.hwm.values()) / MIB:>12.0f}M")


def print_checks(checks: dict, meta: dict) -> None:
    rows = meta["rows"]
    print(f"\nsource mix (rows): {meta['kinds']}")
    for name, check in checks.items():
        acc, disk = check["accounting"], check["disk"]
        ok = acc["samples"] + acc["rejected"] == rows == acc["manifest_rows"] and acc["once"]
        print(f"{name}: {acc['shards']} shards, samples {acc['samples']} + rejected "
              f"{acc['rejected']} = {acc['samples'] + acc['rejected']} of {rows} rows, every row "
              f"exactly once: {'OK' if ok else 'FAILED'}; disk {disk['tars'] / 1e9:.2f} GB tars "
              f"+ {disk['other'] / 1e6:.1f} MB other = {disk['tars'] / 1e9 * 1e6 / rows:.1f} GB "
              f"of tars per million rows")
    if len(checks) == 2:
        a, b = (check["digests"] for check in checks.values())
        same = a == b and len(a) > 0
        print(f"killed + rerun vs uninterrupted: {len(b)} and {len(a)} tars, bytes "
              f"{'identical' if same else 'DIFFERENT'} (sha256 of each tar)")


def print_rejects(records: list[Record]) -> None:
    for r in records:
        if r.stats and r.stats["rows"]:
            print(f"rejects by reason ({r.label}): {r.stats['rejects']}")
            return


def main():
    parser = argparse.ArgumentParser(description="dcpipe shard against a local crawl's web")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="dcpipe's --timeout; stalled URLs answer after timeout + 1 s")
    parser.add_argument("--kill-at", type=float, default=0.5,
                        help="SIGKILL the group when this fraction of rows is recorded (0: no kill)")
    parser.add_argument("--work", type=Path, help="kept workspaces (default: a temp dir)")
    parser.add_argument("--skip-uninterrupted", action="store_true",
                        help="compare with the uninterrupted run already in --work")
    parser.add_argument("--drop-tars", action="store_true",
                        help="delete the uninterrupted run's tars once checked (saves disk; "
                             "their digests stay in checks.json)")
    parser.add_argument("--threads", type=int, help="dcpipe's --threads (default: its default)")
    parser.add_argument("--workers", type=int, help="dcpipe's --workers (default: its default)")
    parser.add_argument("--shards-per-worker", type=int,
                        help="dcpipe's --shards-per-worker (default: its default)")
    parser.add_argument("--healthy", action="store_true",
                        help="every URL a photo that answers at once (no crawl failures)")
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    opts = parser.parse_args()
    n_photos = len(crawl_server_photos(opts.photos))
    with tempfile.TemporaryDirectory() as tmp:
        work = opts.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        meta = prepare_source(work, opts, n_photos)
        dead = refused_port(meta["dead_port"])
        server = start_server(opts.photos, meta["port"], opts.timeout + 1)
        try:
            records, checks = run_all(work, opts, meta, psutil.Process(server.pid))
        finally:
            server.terminate()
            server.wait()
            dead.close()
        print_runs(records, meta["rows"], opts)
        print_rss(records, meta["rows"])
        print_checks(checks, meta)
        print_rejects(records)


def crawl_server_photos(folder: Path) -> list[Path]:
    photos = sorted(folder.rglob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {folder} (pass --photos DIR)")
    return photos


if __name__ == "__main__":
    main()
