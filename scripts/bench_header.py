#!/usr/bin/env python3
"""The header read of the link profile alone (bench_link's row q), idcfs beside rclone mount, with
its two parts: the stat (the series listed: one LIST) and the read of the first 64 KiB of the
1 GB object. A fresh mount on an empty cache each run; the median of ``RUNS`` (argument, 5).

    python scripts/bench_header.py [RUNS]        # LINK=100mbit,50ms by default, as bench_link
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_io import BIG_RANDOM, SM_SERIES, Idcfs, RcloneMount, bench_proxy, prepare_data, warm_server_etags  # noqa: E402
from bench_link import DEFAULT_LINK  # noqa: E402

from bench import bench_workdir  # noqa: E402 - the checkout's test bed first
from tests.testbed.servers import s3_server  # noqa: E402


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    os.environ.setdefault("BENCH_LINK", DEFAULT_LINK)
    workdir = bench_workdir()
    info = prepare_data(workdir / "data")
    with (
        s3_server(info["data"], log_path=workdir / "rclone-serve.log") as server,
        bench_proxy(server.url, 0.0, None) as proxy,
    ):
        warm_server_etags(server.url, [SM_SERIES])
        cache = Path(tempfile.mkdtemp(prefix="bench-header-", dir=workdir))
        warm_up = Idcfs()  # the catalog snapshot, once, untimed
        warm_up.mount(proxy.url, cache)
        warm_up.unmount()
        for tool in (t for t in (Idcfs(), RcloneMount()) if t.available()):
            totals, stats, reads = [], [], []
            for _ in range(runs):
                if isinstance(tool, Idcfs):
                    shutil.rmtree(cache / "blocks", ignore_errors=True)
                    shutil.rmtree(cache / "listings", ignore_errors=True)
                tool.mount(proxy.url, cache if isinstance(tool, Idcfs) else None)
                path = tool.series_dir(info, SM_SERIES, info["sm_path"]) / BIG_RANDOM
                os.sync()
                proxy.log.clear()
                started = time.perf_counter()
                os.stat(path)
                listed = time.perf_counter()
                with open(path, "rb") as handle:
                    handle.read(65536)
                done = time.perf_counter()
                totals.append(done - started)
                stats.append(listed - started)
                reads.append(done - listed)
                proxy.settle(timeout=10)
                tool.unmount()
            print(
                f"{tool.name:14} median {statistics.median(totals):.3f} s ({min(totals):.3f}-{max(totals):.3f}); "
                f"stat {min(stats):.3f}-{max(stats):.3f} s, read {min(reads):.3f}-{max(reads):.3f} s; "
                f"{proxy.log.count()} requests, {proxy.log.body_bytes / 1024:,.0f} KiB fetched (last run)"
            )
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
