"""The rows of issue 21's link profile: one line shared by every connection (a token bucket in the
proxy) with latency per request, ``LINK`` (default 100 Mbit/s and 50 ms), idcfs beside s5cmd,
s3fs-fuse and rclone mount, each cold run on a fresh mount (idcfs: an empty cache).

Rows:

- n. a cold 200-file CT series, ``cat`` file by file (s5cmd: its download);
- o. OpenSlide reading 500 random 256x256 level-0 regions of the generated slide, cold;
- p. a demand read's latency: the first 64 KiB of each of 20 small series' files, one after
  another, with the line idle and while ``dd`` streams the 500 MB object through the same
  tool (the stream fills the line); for idcfs also while it fetches the 1 GB object whole
  (after reads at six places of it); p50 and p99 of each, and busy over idle;
- q. the header read: ``open(path, "rb").read(65536)`` of the 1 GB object, its time and the
  bytes fetched once background work has settled.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_io import (
    BIG_RANDOM,
    BIG_SEQUENTIAL,
    CT_SERIES,
    REPO,
    SM_SERIES,
    Idcfs,
    RcloneMount,
    S3fsFuse,
    Tool,
    bench_proxy,
    cat_one_by_one,
    prepare_data,
    s5cmd_series_times,
    warm_server_etags,
)

from tests.testbed.proxy import CountingProxy
from tests.testbed.servers import s3_server
from tests.testbed.wsigen import BIG_SLIDE_SERIES, level_file_name

DEFAULT_LINK = "100mbit,50ms"
#: Demand reads per latency sample (each the first read of another object).
DEMAND_READS = 20
#: Seconds a run of a peer is given before it is stopped (s3fs-fuse's OpenSlide row took over
#: 14 minutes on the line).
LIMIT = 180.0
#: A child run of a row imports bench_io (scripts/) and the test bed (the checkout).
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "scripts"), str(REPO)])}


def bench_link(runs: int, workdir: Path) -> list[tuple[str, ...]]:
    given = os.environ.get("BENCH_LINK")
    os.environ["BENCH_LINK"] = given or DEFAULT_LINK  # the proxy's line (bench_io.bench_proxy)
    try:
        return _bench_link(runs, workdir)
    finally:
        if given is None:
            del os.environ["BENCH_LINK"]


def _bench_link(runs: int, workdir: Path) -> list[tuple[str, ...]]:
    info = prepare_data(workdir / "data")
    rows: list[tuple[str, ...]] = []
    with (
        s3_server(info["data"], log_path=workdir / "rclone-serve.log") as server,
        bench_proxy(server.url, 0.0, None) as proxy,
    ):
        folders = [CT_SERIES, SM_SERIES, BIG_SLIDE_SERIES, *(s.crdc_series_uuid for s in info["small"])]
        warm_server_etags(server.url, folders)
        wanted = os.environ.get("BENCH_TOOLS", "").split(",")  # e.g. idcfs,s3fs-fuse (default: all)
        tools: list[Tool] = [
            t for t in (Idcfs(), S3fsFuse(), RcloneMount()) if t.available() and (wanted == [""] or t.name in wanted)
        ]
        cache = Path(tempfile.mkdtemp(prefix="bench-link-", dir=workdir))
        warm_up = Idcfs()  # the catalog snapshot, once, untimed
        warm_up.mount(proxy.url, cache)
        warm_up.unmount()
        times = s5cmd_series_times(proxy, workdir, runs)
        rows.append(_row("n. cold 200-file series", "s5cmd cp", times, proxy.log.count(), proxy.log.body_bytes))
        for tool in tools:
            rows += _tool_rows(tool, proxy, info, cache, runs)
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def _tool_rows(tool: Tool, proxy: CountingProxy, info: dict, cache: Path, runs: int) -> list[tuple[str, ...]]:
    def fresh() -> Path:
        if getattr(tool, "root", None) is not None:
            tool.unmount()
        if isinstance(tool, Idcfs):
            shutil.rmtree(cache / "blocks", ignore_errors=True)
            shutil.rmtree(cache / "listings", ignore_errors=True)
        tool.mount(proxy.url, cache if isinstance(tool, Idcfs) else None)
        return tool.root

    def timed(action: Callable[[], None] | list[str]) -> tuple[list[float], int, int]:
        """Each run's time; a command (a list) runs in a child stopped after :data:`LIMIT`
        seconds, its time then infinite (a peer that would take many minutes)."""
        times = []
        for _ in range(runs):
            fresh()
            os.sync()
            proxy.log.clear()
            started = time.perf_counter()
            if callable(action):
                action()
            else:
                try:
                    subprocess.run(action, check=True, timeout=LIMIT, capture_output=True, env=CHILD_ENV)
                except subprocess.TimeoutExpired:
                    started = -math.inf
            times.append(time.perf_counter() - started)
            proxy.settle(timeout=10)
        return times, proxy.log.count(), proxy.log.body_bytes

    rows: list[tuple[str, ...]] = []

    def report(row: tuple[str, ...]) -> None:
        rows.append(row)
        print("  " + "  ".join(row), flush=True)  # a peer's rows can take many minutes

    fresh()
    try:
        ct_dir = tool.series_dir(info, CT_SERIES, info["ct"].path)
        sm_dir = tool.series_dir(info, SM_SERIES, info["sm_path"])
        slide = tool.series_dir(info, BIG_SLIDE_SERIES, info["slide"].path) / level_file_name(BIG_SLIDE_SERIES, 0)
        small = [tool.series_dir(info, s.crdc_series_uuid, s.path) for s in info["small"]]

        report(_row("n. cold 200-file series", tool.name, *timed(lambda: cat_one_by_one(ct_dir))))
        regions = [sys.executable, "-c", f"from bench_io import openslide_regions; openslide_regions({str(slide)!r})"]
        report(_row("o. OpenSlide 500 regions, cold", tool.name, *timed(regions)))
        stream = ["dd", f"if={sm_dir / BIG_SEQUENTIAL}", "of=/dev/null", "bs=1M"]
        report(_demand_row(tool, fresh, small, stream, sm_dir / BIG_SEQUENTIAL, "a stream"))
        if isinstance(tool, Idcfs):  # the peers have no whole-object fetch
            whole = [sys.executable, "-c", _JUMPS, str(sm_dir / BIG_RANDOM)]
            report(_demand_row(tool, fresh, small, whole, sm_dir / BIG_RANDOM, "a whole-object fetch"))

        def header() -> None:
            os.stat(sm_dir / BIG_RANDOM)  # the series listed: one LIST, counted with the read
            with open(sm_dir / BIG_RANDOM, "rb") as handle:
                handle.read(65536)

        times, requests, fetched = timed(header)
        report(("q. header read (64 KiB of 1 GB)", tool.name, f"{statistics.median(times):.3f} s",
                str(requests), f"{fetched / 2**10:,.0f} KiB"))  # fmt: skip
    finally:
        tool.unmount()
    return rows


def _demand_row(
    tool: Tool, fresh: Callable[[], Path], small: list[Path], filler: list[str], target: Path, what: str
) -> tuple[str, ...]:
    """p50/p99 of first reads of other objects, idle and while ``filler`` (a command reading
    ``target``) has the line full."""

    def first_reads() -> list[float]:
        latencies = []
        for folder in small[:DEMAND_READS]:
            path = next(folder.iterdir())
            started = time.perf_counter()
            with open(path, "rb") as handle:
                handle.read(65536)
            latencies.append(time.perf_counter() - started)
        return latencies

    def listed() -> None:  # outside the timing, the filler's own listing too
        fresh()
        for folder in small[:DEMAND_READS]:
            next(folder.iterdir())
        target.stat()

    listed()
    idle = first_reads()
    listed()
    filling = subprocess.Popen(filler, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)  # the line full
        busy = first_reads()
    finally:
        filling.kill()
        filling.wait()

    def p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return (f"p. demand read, idle / behind {what}", tool.name,
            f"p50 {p(idle, 0.5) * 1e3:.0f} / {p(busy, 0.5) * 1e3:.0f} ms",
            f"p99 {p(idle, 0.99) * 1e3:.0f} / {p(busy, 0.99) * 1e3:.0f} ms",
            f"{p(busy, 0.5) / p(idle, 0.5):.2f}x / {p(busy, 0.99) / p(idle, 0.99):.2f}x")  # fmt: skip


#: Reads at six places of a file, then exits: idcfs then fetches the object whole, in the
#: background, for as long as the line needs (80 s for 1 GB at 100 Mbit/s).
_JUMPS = (
    "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
    "[os.pread(fd, 65536, k * 150_000_017) for k in range(1, 7)]"
)


def _row(workload: str, tool: str, times: list[float], requests: int, fetched: int) -> tuple[str, ...]:
    median = statistics.median(times)
    shown = f"{median:.3f} s" if math.isfinite(median) else f"> {LIMIT:.0f} s (stopped)"
    return (workload, tool, shown, str(requests), f"{fetched / 1e6:.1f} MB")
