"""The scale section of scripts/bench.py: what one file costs as series grow, and what a ``find``
over half a million objects costs in memory.

Objects are tiny (a few dozen bytes: their own key) at the real UUID paths of real series of the
index, written by :func:`tests.testbed.bulk.tiny_series` and served by ``rclone serve s3`` on
loopback with a counting proxy in front:

- **CPU per file**: the daemon's CPU time (user + system, from /proc) while ``cat``-reading files
  one by one, in IDC's largest series (91,980 instances) and in a 40-instance series, with
  ``--prefetch file`` (the issue's measurement; listing the folder first, not counted);
- **find**: ``find`` with a stat of every file over IDC's seven largest series in the
  ``idc-open-data`` bucket (502,482 objects), with the default ``--listing-cache-size``; the
  daemon's RSS sampled every 0.2 s; the peak is reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from idcfs.service.mounting import daemon_pid
from tests.testbed.bulk import LARGEST_SERIES, tiny_series
from tests.testbed.proxy import CountingProxy
from tests.testbed.servers import s3_server

IDCFS = str(Path(sys.executable).with_name("idcfs"))
SMALL_SERIES = "002ded68-d9a7-407b-84aa-aa700b0f30ad"  # eay131, a 40-instance CT series
#: IDC's seven largest series in idc-open-data (ldct_and_projection_data), with their real counts.
FIND_SERIES = {
    "da034841-bcae-49df-94c3-c2d0aac183ad": 91980,
    "cb1ba286-308a-4573-8e74-1350e06a0013": 91980,
    "aa575607-e9df-4846-ad8a-4c5dc959c6db": 67702,
    "b572ecf4-8a69-4543-ad25-2c5ab555c782": 67702,
    "c44baca6-8a18-485b-9888-ba10a4186e92": 61120,
    "2f4af33c-1642-4af6-ab7c-21328833c8f9": 61120,
    "500e8000-b1eb-400e-a6ff-043b105aa2c0": 60878,
}
FILES_READ = 400


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _mount(endpoint: str, cache: Path, *options: str) -> Path:
    mountpoint = Path(tempfile.mkdtemp(prefix="idcfs-scale-"))
    result = subprocess.run(
        [IDCFS, "mount", str(mountpoint), "--endpoint-url", endpoint, "--cache-dir", str(cache), *options],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"mount failed: {result.stderr}")
    return mountpoint


def _umount(mountpoint: Path) -> None:
    subprocess.run([IDCFS, "umount", str(mountpoint)], check=False, capture_output=True)
    mountpoint.rmdir()


def bench_scale(workdir: Path) -> list[tuple[str, str, str]]:
    data = workdir / "scale"
    print("  writing tiny objects (once; reused afterwards)...", flush=True)
    small = tiny_series(data, SMALL_SERIES, 40, clouds=("s3",))
    big = {uuid: tiny_series(data, uuid, count, clouds=("s3",)) for uuid, count in FIND_SERIES.items()}
    largest = big[LARGEST_SERIES]
    rows = []
    with (
        s3_server(data / "s3", log_path=workdir / "rclone-scale.log") as server,
        CountingProxy(server.url) as proxy,
        tempfile.TemporaryDirectory(prefix="idcfs-scale-cache-") as cache,
    ):
        # rclone serve s3 walks the whole 91,980-file folder for every page (~1-2 s a page here, where
        # S3 answers in tens of ms): the listing needs a deadline longer than the default 60 s.
        mountpoint = _mount(proxy.url, Path(cache), "--prefetch", "file", "--retry-deadline", "900")
        try:
            pid = daemon_pid(mountpoint)
            for label, series in (("40-instance series", small), ("91,980-instance series", largest)):
                folder = mountpoint / series.series.path
                started = time.perf_counter()
                names = sorted(os.listdir(folder))
                listed = time.perf_counter() - started
                chosen = names[:: max(1, len(names) // FILES_READ)][:FILES_READ]
                before = _cpu_seconds(pid)
                for name in chosen:
                    with open(folder / name, "rb") as handle:
                        handle.read()
                per_file = (_cpu_seconds(pid) - before) / len(chosen)
                rows.append(
                    (
                        f"daemon CPU per file read, {label}",
                        f"{per_file * 1e3:.2f} ms",
                        f"{len(chosen)} files, --prefetch file; first listing {listed:.2f} s",
                    )
                )
        finally:
            _umount(mountpoint)

        mountpoint = _mount(proxy.url, Path(cache) / "find", "--retry-deadline", "900")
        try:
            pid = daemon_pid(mountpoint)
            baseline = _rss_mib(pid)
            peak = [baseline]
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.2):
                    peak.append(_rss_mib(pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            proxy.log.clear()
            started = time.perf_counter()
            folders = [str(mountpoint / s.series.path) for s in big.values()]
            result = subprocess.run(
                ["find", *folders, "-type", "f", "-printf", "%s\n"], capture_output=True, text=True, check=True
            )
            took = time.perf_counter() - started
            done.set()
            sampler.join()
            found = len(result.stdout.splitlines())
            lists = proxy.log.count("GET", "list-type")
            rows.append(
                (
                    f"find -printf %s over {found:,} objects in {len(big)} series",
                    f"{max(peak):.0f} MB peak RSS",
                    f"{took:.1f} s, {lists} LIST requests; RSS at mount {baseline:.0f} MB; "
                    "default --listing-cache-size 64M",
                )
            )
        finally:
            _umount(mountpoint)
    return rows
