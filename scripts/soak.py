"""Soak: idcfs under a fault-injecting proxy for a given time, with mixed readers.

    python scripts/soak.py --minutes 30 [--fault-rate 0.3] [--report bench/RELIABILITY.md]

What runs, against ``rclone serve s3`` on loopback behind the proxy of the tests:

- **faults** on a share of requests (``--fault-rate``): 503 SlowDown, 500, 429 with Retry-After,
  connection reset, a dropped connection, a truncated body, a garbage status line, a 3 s stall,
  a 50 KB/s body;
- **readers**: a series read whole with ``cat``-like reads, 8 parallel readers of random files,
  random 64 KiB reads in a large object, and ``find`` with a stat of every file; every read is
  checked byte for byte against the source, and watched: one running longer than the retry
  deadline + request timeout + 10 s counts as hung;
- **a kill -9** of the daemon midway, then a remount on the same cache;
- **a full cache disk**: the blocks live on a small tmpfs (``--tmpfs-mb``), capped larger than
  the tmpfs, and a filler file takes the remaining space for a while, then goes;
- **the cache emptied** (``idcfs cache clear``) every 5 s while mounted, and each file's pages
  dropped from the kernel's cache before it is read, so reads keep reaching the network.

It prints the faults injected by kind; reads ok / EIO / wrong / hung; the daemon's RSS over time;
and, with ``--report``, writes them as Markdown. Needs root (FUSE, tmpfs).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout: idcfs and its test bed (tests/testbed)

from idcfs.service.mounting import daemon_pid, mounted_fuse_points  # noqa: E402
from tests.testbed.bulk import PAGED_SERIES, tiny_series  # noqa: E402
from tests.testbed.dicomgen import generate, index_rows, series_from_row  # noqa: E402
from tests.testbed.proxy import CountingProxy  # noqa: E402
from tests.testbed.servers import s3_server  # noqa: E402

WORK = REPO / ".testdata" / "soak"
IDCFS = str(Path(sys.executable).with_name("idcfs"))
LARGE_SERIES = "02149e90-c1f7-4cd0-91bc-925380b717b7"  # a real SM series: one large object in it
LARGE_NAME = "00000000-0000-4000-8000-00000000050a.dcm"

#: Fault kinds and their weights among injected faults.
FAULTS = {
    503: 3,
    500: 2,
    "retry-after:1": 1,
    "reset": 3,
    "drop": 1,
    "truncate": 2,
    "badstatus": 1,
    "stall:3": 2,
    "slow:51200": 1,
}


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)  # (workload, ok|eio|wrong|hung|other)
    errors: Counter = field(default_factory=Counter)
    rss: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: dict[int, tuple[str, float]] = field(default_factory=dict)

    def add(self, workload: str, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.outcomes[(workload, outcome)] += 1
            if detail:
                self.errors[detail] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fault-rate", type=float, default=0.5, help="share of requests that fail (default: 0.5)")
    parser.add_argument("--retry-deadline", type=float, default=60.0, help="idcfs --retry-deadline (default: 60)")
    parser.add_argument("--request-timeout", type=float, default=20.0)
    parser.add_argument("--large-mb", type=int, default=256, help="size of the large object")
    parser.add_argument("--tmpfs-mb", type=int, default=96, help="size of the cache disk")
    parser.add_argument("--report", type=Path, help="write the results as Markdown here")
    parser.add_argument("--serve-proxy", metavar="UPSTREAM", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        return _serve_proxy(args.serve_proxy, args.fault_rate, args.state)
    if os.geteuid() != 0:
        print("soak: needs root (FUSE mounts, a tmpfs)", file=sys.stderr)
        return 2

    data = WORK / "data"
    series = generate(data, max_instances=40, image_size=256)
    paged = tiny_series(data, PAGED_SERIES, 1500, awkward=True, clouds=("s3",))
    large = _large_object(data, args.large_mb << 20)
    sources = {
        s.path + "/" + f.name: data / "s3" / s.aws_bucket / s.crdc_series_uuid / f.name for s in series for f in s.files
    }
    folders = [s.path for s in series] + [paged.series.path]
    print(f"soak: {len(sources)} DICOM files in {len(series)} series, {len(paged.names)} tiny objects, "
          f"{args.large_mb} MB object; {args.minutes:g} min at {args.fault_rate:.0%} faults", flush=True)  # fmt: skip

    # Only the blocks live on the small disk: the catalog snapshot and listings stay beside it.
    cache_disk = WORK / "cache" / "blocks"
    cache_disk.mkdir(parents=True, exist_ok=True)
    subprocess.run(["umount", "-l", str(cache_disk)], capture_output=True, check=False)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m", "tmpfs", str(cache_disk)], check=True)
    mountpoint = WORK / "mnt"
    mountpoint.mkdir(exist_ok=True)
    if str(mountpoint) in mounted_fuse_points():
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)

    tally = Tally()
    bound = args.retry_deadline + args.request_timeout + 10
    with (
        s3_server(data / "s3", log_path=WORK / "rclone.log") as server,
        ProxyProcess(server.url, args.fault_rate) as proxy,
    ):
        mount_args = [
            "mount", str(mountpoint), "--endpoint-url", proxy.url, "--cache-dir", str(cache_disk.parent),
            "--cache-size", f"{args.tmpfs_mb * 4}M", "--memory-cache-size", "16M",
            "--retry-deadline", str(args.retry_deadline), "--request-timeout", str(args.request_timeout),
            "--log-file", str(WORK / "idcfs.log"),
        ]  # fmt: skip
        (WORK / "idcfs.log").unlink(missing_ok=True)
        _mount(mount_args)
        stop = threading.Event()
        paused = threading.Event()  # set while the daemon is being restarted
        workers = _start_workers(mountpoint, sources, folders, paged, large, tally, stop, paused)
        watchdog = threading.Thread(target=_watch, args=(tally, stop, bound), daemon=True)
        watchdog.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        killed = filled = unfilled = False
        next_report = 60.0
        filler = cache_disk / "filler"
        while time.monotonic() < end:
            time.sleep(5)
            elapsed = time.monotonic() - started
            pid = daemon_pid(mountpoint)
            if pid:
                tally.rss.append((elapsed, _rss(pid)))
            # Empty the cache while mounted: reads keep going to the network.
            subprocess.run([IDCFS, "cache", "clear", "--cache-dir", str(cache_disk.parent)], capture_output=True)
            if not filled and elapsed > args.minutes * 60 * 0.25:
                filled = True
                _fill(filler)
                print(f"[{elapsed:5.0f}s] cache disk filled", flush=True)
            if filled and not unfilled and elapsed > args.minutes * 60 * 0.4:
                unfilled = True
                filler.unlink(missing_ok=True)
                print(f"[{elapsed:5.0f}s] cache disk has room again", flush=True)
            if not killed and elapsed > args.minutes * 60 * 0.5:
                killed = True
                paused.set()
                _wait_idle(tally, bound)
                os.kill(daemon_pid(mountpoint), 9)
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
                _mount(mount_args)
                paused.clear()
                print(f"[{elapsed:5.0f}s] daemon killed with SIGKILL and mounted again", flush=True)
            if elapsed >= next_report:
                next_report += 60
                print(f"[{elapsed:5.0f}s] {_summary(tally)}  faults {sum(proxy.faults().values()):,}", flush=True)
        stop.set()
        for worker in workers:
            worker.join(timeout=bound)
        stuck = sum(w.is_alive() for w in workers)
        faults = proxy.faults()
        stats = _stats(mountpoint)
        subprocess.run([IDCFS, "umount", str(mountpoint)], check=False)
    subprocess.run(["umount", "-l", str(cache_disk)], check=False)
    log_text = (WORK / "idcfs.log").read_text(errors="replace")
    report = _report(args, faults, tally, stuck, stats, log_text)
    print(report)
    if args.report:
        args.report.write_text(report)
    wrong = sum(n for (_, outcome), n in tally.outcomes.items() if outcome in ("wrong", "hung"))
    return 1 if wrong or stuck else 0


class ProxyProcess:
    """The fault-injecting proxy in a process of its own: in this one, its threads would share
    the GIL with two dozen readers checking bytes, and the proxy would set the pace."""

    def __init__(self, upstream: str, fault_rate: float) -> None:
        self._state = WORK / "proxy-state.json"
        self._state.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--serve-proxy", upstream, "--fault-rate", str(fault_rate)]
        self._process = subprocess.Popen([*command, "--state", str(self._state)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self._state.exists():
            if time.monotonic() > deadline or self._process.poll() is not None:
                raise SystemExit("soak: the proxy did not start")
            time.sleep(0.1)
        self.url = json.loads(self._state.read_text())["url"]

    def faults(self) -> dict[str, int]:
        try:
            return json.loads(self._state.read_text())["faults"]
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        self._process.wait(10)


def _serve_proxy(upstream: str, fault_rate: float, state: Path) -> int:
    """The proxy process: faults at ``fault_rate`` by :data:`FAULTS`' weights; its URL and the
    faults so far go to ``state`` (JSON, rewritten every second) until it is terminated."""
    import signal

    rng = random.Random(2026)
    kinds, weights = list(FAULTS), list(FAULTS.values())
    lock = threading.Lock()

    def fault(method: str, path: str):
        with lock:
            return rng.choices(kinds, weights)[0] if rng.random() < fault_rate else None

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with CountingProxy(upstream) as proxy:
        proxy.fault = fault
        while True:
            partial = state.with_suffix(".tmp")
            partial.write_text(json.dumps({"url": proxy.url, "faults": {str(k): n for k, n in proxy.faults.items()}}))
            partial.replace(state)
            if stop.is_set():
                return 0
            stop.wait(1)


def _large_object(data: Path, size: int):
    series = series_from_row(index_rows([LARGE_SERIES])[0])
    path = data / "s3" / series.aws_bucket / LARGE_SERIES / LARGE_NAME
    if not path.exists() or path.stat().st_size != size:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            generator = random.Random(size)
            for _ in range(size >> 20):
                handle.write(generator.randbytes(1 << 20))
    return series.path + "/" + LARGE_NAME, path


def _mount(argv: list[str]) -> None:
    result = subprocess.run([IDCFS, *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"soak: mount failed: {result.stderr}")


def _start_workers(mountpoint, sources, folders, paged, large, tally, stop, paused) -> list[threading.Thread]:
    names = sorted(sources)
    by_series: dict[str, list[str]] = {}
    for name in names:
        by_series.setdefault(name.rsplit("/", 1)[0], []).append(name)
    large_path, large_source = large
    large_bytes = large_source.read_bytes()
    source_bytes = {name: path.read_bytes() for name, path in sources.items()}

    def guarded(workload: str, body, number: int) -> None:
        seed = random.Random(number)  # each reader its own sequence (the same one would share every fetch)
        while not stop.is_set():
            if paused.is_set():
                time.sleep(0.2)
                continue
            ident = threading.get_ident()
            with tally.lock:
                tally.running[ident] = (workload, time.monotonic())
            try:
                ok = body(seed)
                tally.add(workload, "ok" if ok else "wrong", "" if ok else "bytes differ")
            except OSError as error:
                if paused.is_set() or error.errno in (errno.ENOTCONN, errno.ENODEV):
                    tally.add(workload, "restart")  # the daemon was being killed: not a read result
                elif error.errno == errno.EIO:
                    tally.add(workload, "eio", "EIO")
                else:
                    tally.add(workload, "other", f"{errno.errorcode.get(error.errno, error.errno)}")
            finally:
                with tally.lock:
                    tally.running.pop(ident, None)

    def tick() -> None:
        """One file-system call starts now: the watchdog times each call, not each operation."""
        with tally.lock:
            ident = threading.get_ident()
            if ident in tally.running:
                tally.running[ident] = (tally.running[ident][0], time.monotonic())

    def read_file(name: str) -> bool:
        tick()
        with open(mountpoint / name, "rb") as handle:
            _forget_pages(handle)
            return handle.read() == source_bytes[name]

    def series_cat(seed: random.Random) -> bool:
        folder = seed.choice(sorted(by_series))
        return all(read_file(n) for n in by_series[folder])

    def random_file(seed: random.Random) -> bool:
        time.sleep(0.005)  # mostly page-cache and memory hits: leave the CPU to the network work
        return read_file(seed.choice(names))

    def random_reads(seed: random.Random) -> bool:
        with open(mountpoint / large_path, "rb") as handle:
            _forget_pages(handle)
            for _ in range(16):
                offset = seed.randrange(0, len(large_bytes) - 65536)
                handle.seek(offset)
                tick()
                if handle.read(65536) != large_bytes[offset : offset + 65536]:
                    return False
        return True

    def find(seed: random.Random) -> bool:
        count = 0
        for folder in folders:
            tick()
            for entry in os.scandir(mountpoint / folder):
                tick()
                entry.stat()
                count += 1
        return count == len(names) + len(paged.names)

    plan = [("series cat", series_cat)] + [("parallel readers", random_file)] * 8
    # Random reads of the large object keep requests flowing (the rest is mostly cached).
    plan += [("random 64 KiB reads", random_reads)] * 16 + [("find", find)]
    threads = []
    for number, (workload, body) in enumerate(plan):
        thread = threading.Thread(target=guarded, args=(workload, body, number), daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def _watch(tally: Tally, stop: threading.Event, bound: float) -> None:
    """Count a file-system call that runs past the bound as hung, once."""
    flagged: set[tuple[int, float]] = set()
    while not stop.wait(1):
        now = time.monotonic()
        with tally.lock:
            for ident, (workload, since) in tally.running.items():
                if now - since > bound and (ident, since) not in flagged:
                    flagged.add((ident, since))
                    tally.outcomes[(workload, "hung")] += 1


def _wait_idle(tally: Tally, bound: float) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        with tally.lock:
            if not tally.running:
                return
        time.sleep(0.2)


def _fill(path: Path) -> None:
    try:
        with open(path, "wb") as handle:
            while True:
                handle.write(b"\0" * (1 << 20))
    except OSError:
        pass


def _forget_pages(handle) -> None:
    """Drop this file's pages from the kernel's cache, so the read reaches the daemon (dropping
    every cache would also evict the server's source files and make the disk the bottleneck)."""
    os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _stats(mountpoint: Path) -> dict:
    try:
        return json.loads((mountpoint / ".idcfs" / "stats").read_bytes())
    except (OSError, ValueError):
        return {}


def _summary(tally: Tally) -> str:
    with tally.lock:
        totals = Counter()
        for (_, outcome), n in tally.outcomes.items():
            totals[outcome] += n
    return "  ".join(f"{k} {v:,}" for k, v in sorted(totals.items()))


def _report(args, faults: dict, tally: Tally, stuck: int, stats: dict, log_text: str) -> str:
    lines = [
        "# Reliability: the soak",
        "",
        f"`python scripts/soak.py --minutes {args.minutes:g} --fault-rate {args.fault_rate}` (`make soak`): "
        f"idcfs with `--retry-deadline {args.retry_deadline:g}` (the default is 60) against `rclone serve s3` "
        f"behind the fault-injecting proxy, on a 2-core machine. The cache is on a {args.tmpfs_mb} MB tmpfs, "
        "filled completely for 15% of the run; the daemon is killed with SIGKILL halfway and mounted again.",
        "",
        "## Faults injected",
        "",
        "| fault | count |",
        "| --- | ---: |",
    ]
    lines += [f"| {kind} | {n:,} |" for kind, n in sorted(faults.items(), key=lambda kv: -kv[1])]
    lines += [f"| **all** | **{sum(faults.values()):,}** |", "", "## Operations", ""]
    outcomes = ["ok", "eio", "wrong", "hung", "other", "restart"]
    lines += ["| workload | " + " | ".join(outcomes) + " |", "| --- |" + " ---: |" * len(outcomes)]
    for workload in sorted({w for w, _ in tally.outcomes}):
        lines.append(f"| {workload} | " + " | ".join(f"{tally.outcomes[(workload, o)]:,}" for o in outcomes) + " |")
    totals = {o: sum(n for (_, oo), n in tally.outcomes.items() if oo == o) for o in outcomes}
    lines.append("| **all** | " + " | ".join(f"**{totals[o]:,}**" for o in outcomes) + " |")
    lines += [
        "",
        "An operation is one whole series, one file, 16 random 64 KiB reads in the large object, or one "
        "`find` (readdir and stat) of every series folder; *wrong*: any byte differs from the source; "
        "*hung*: one file-system call (a read, a stat, a readdir) ran past deadline + request timeout + 10 s; "
        f"*restart*: cut by the SIGKILL. Threads still running at the end: {stuck}.",
        "",
        "## Daemon RSS",
        "",
        "| minute | RSS |",
        "| ---: | ---: |",
    ]
    per_minute: dict[int, int] = {}
    for elapsed, rss in tally.rss:
        per_minute[int(elapsed // 60)] = max(per_minute.get(int(elapsed // 60), 0), rss)
    lines += [f"| {minute} | {rss / 2**20:.0f} MiB |" for minute, rss in sorted(per_minute.items())]
    disk_pauses = log_text.count("cannot be written")
    lines += [
        "",
        "## From the daemon",
        "",
        f"- disk cache write failures (full disk) that paused writes: {disk_pauses}; "
        f"writable again: {log_text.count('is writable again')}",
        f"- requests at the end (second daemon): {json.dumps(stats.get('requests', {}))}, retries "
        f"{stats.get('retries', 0):,}, failed for good {stats.get('errors', 0):,}",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
