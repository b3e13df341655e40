#!/usr/bin/env python3
"""Two checkouts of idcfs on the same read workloads, runs interleaved (A, B, A, B, ...), so that a
machine whose load drifts during a run biases neither: for telling a small change in speed from
noise, which one run of ``bench.py`` per checkout cannot.

    python scripts/bench_ab.py --before ../base --runs 5 [--workloads a,c,d,e,f,hdr]

Workloads as bench_io's rows: a (cold series, cat), c (warm re-read after remount), d (500 MB
dd), e (2,000 random 64 KiB preads in 1 GB, cold), f (ls -lR of 50 series), g (OpenSlide's 500
random regions of a slide, cold), and hdr (Python's
``open(path, "rb").read(65536)`` of the 1 GB object: its bytes fetched, once background work has
settled, are what matters).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_io import (  # noqa: E402 - the checkout's test bed first
    BIG_RANDOM,
    BIG_SEQUENTIAL,
    BIG_SLIDE_SERIES,
    CT_SERIES,
    SM_SERIES,
    Idcfs,
    IdcfsBefore,
    cat_one_by_one,
    dd,
    level_file_name,
    ls_recursive,
    openslide_regions,
    prepare_data,
    random_reads,
    warm_server_etags,
)

from tests.testbed.proxy import CountingProxy  # noqa: E402
from tests.testbed.servers import s3_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workloads", default="a,c,d,f")
    parser.add_argument("--latency", type=float, default=0.020)
    args = parser.parse_args()
    os.environ["BENCH_IDCFS_BEFORE"] = str(args.before.resolve())
    wanted = args.workloads.split(",")
    work = Path(tempfile.mkdtemp(prefix="idcfs-ab-"))
    info = prepare_data(Path(os.environ.get("BENCH_DATA", REPO_DATA)))
    times: dict[str, dict[str, list[float]]] = {}
    fetched: dict[str, dict[str, list[int]]] = {}
    with (
        s3_server(info["data"], log_path=work / "rclone.log") as server,
        CountingProxy(server.url, latency=args.latency) as proxy,
    ):
        folders = [CT_SERIES, SM_SERIES, BIG_SLIDE_SERIES, *(s.crdc_series_uuid for s in info["small"])]
        warm_server_etags(server.url, folders)
        tools = {"after": Idcfs(), "before": IdcfsBefore()}
        caches = {name: work / name for name in tools}
        for name, tool in tools.items():  # catalogs built, untimed
            tool.mount(proxy.url, caches[name])
            tool.unmount()
        for _ in range(args.runs):
            for name, tool in tools.items():
                for workload in wanted:
                    shutil.rmtree(caches[name] / "blocks", ignore_errors=True)
                    shutil.rmtree(caches[name] / "listings", ignore_errors=True)
                    tool.mount(proxy.url, caches[name])
                    ct_dir = tool.series_dir(info, CT_SERIES, info["ct"].path)
                    sm_dir = tool.series_dir(info, SM_SERIES, info["sm_path"])
                    small = [tool.series_dir(info, s.crdc_series_uuid, s.path) for s in info["small"]]
                    slide = tool.series_dir(info, BIG_SLIDE_SERIES, info["slide"].path)
                    if workload == "c":  # warm: read once, remount, time the re-read
                        cat_one_by_one(ct_dir)
                        tool.unmount()
                        tool.mount(proxy.url, caches[name])
                    if workload in ("e", "hdr"):
                        os.stat(sm_dir / BIG_RANDOM)  # the series listed, outside the count
                    if workload == "g":
                        os.stat(slide / level_file_name(BIG_SLIDE_SERIES, 0))
                    os.sync()
                    proxy.log.clear()
                    started = time.perf_counter()
                    if workload in ("a", "c"):
                        cat_one_by_one(ct_dir)
                    elif workload == "d":
                        dd(sm_dir / BIG_SEQUENTIAL)
                    elif workload == "e":
                        random_reads(sm_dir / BIG_RANDOM)
                    elif workload == "hdr":
                        with open(sm_dir / BIG_RANDOM, "rb") as handle:
                            handle.read(65536)
                    elif workload == "g":
                        openslide_regions(slide / level_file_name(BIG_SLIDE_SERIES, 0))
                    else:
                        ls_recursive(small)
                    times.setdefault(workload, {}).setdefault(name, []).append(time.perf_counter() - started)
                    proxy.settle()
                    fetched.setdefault(workload, {}).setdefault(name, []).append(proxy.log.body_bytes)
                    tool.unmount()
    columns = "after | before | after / before | fetched after | before"
    print(f"| workload (median of {args.runs}, interleaved) | {columns} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for workload in wanted:
        after, before = (statistics.median(times[workload][k]) for k in ("after", "before"))
        bytes_after, bytes_before = (statistics.median(fetched[workload][k]) / 1e6 for k in ("after", "before"))
        print(
            f"| {workload} | {after:.3f} s | {before:.3f} s | {after / before:.2f}x "
            f"| {bytes_after:.1f} MB | {bytes_before:.1f} MB |"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


REPO_DATA = str(Path(__file__).resolve().parent.parent / ".bench" / "data")

if __name__ == "__main__":
    sys.exit(main())
