"""The dask section of scripts/bench.py: series per second of ``idcfs.dask.map_series`` over 1,
2 and 4 local worker processes, on the same cohort, each time through a cold mount.

The cohort is the 50 series (up to 5 instances each) of the reads section (real UUID paths of one patient),
served by ``rclone serve s3`` behind the counting proxy with its per-request latency. Each
measure mounts the cohort afresh (``idcfs.mount(series=...)``, an empty cache folder), starts a
``distributed.LocalCluster`` of N single-threaded worker processes (started and warmed outside
the timing), and times ``map_series`` with a task that reads every file of its series and parses
the first with pydicom. All workers share the one mount, as the workers of one node do.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench_io import prepare_data

from tests.testbed.proxy import CountingProxy
from tests.testbed.servers import s3_server

WORKER_COUNTS = (1, 2, 4)


def read_series(folder: Path) -> dict:
    """A task: every byte of the series, and the first file's header."""
    import pydicom

    files = sorted(folder.iterdir())
    size = sum(len(path.read_bytes()) for path in files)
    modality = str(pydicom.dcmread(files[0], stop_before_pixels=True).Modality) if files else None
    return {"files": len(files), "bytes": size, "modality": modality}


def bench_dask(runs: int, latency: float, workdir: Path) -> list[tuple[str, ...]]:
    from distributed import Client, LocalCluster

    import idcfs
    from idcfs.dask import map_series

    info = prepare_data(workdir / "data")
    cohort = [series.crdc_series_uuid for series in info["small"]]
    rows: list[tuple[str, ...]] = []
    with (
        s3_server(info["data"], log_path=workdir / "rclone-serve.log") as server,
        CountingProxy(server.url, latency=latency) as proxy,
    ):
        first = None
        for workers in WORKER_COUNTS:
            times, requests = [], 0
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            with cluster, Client(cluster) as client:
                client.run(__import__, "pydicom")  # imports are not what is measured
                for _ in range(runs):
                    base = Path(tempfile.mkdtemp(prefix="bench-dask-"))
                    with idcfs.mount(
                        base / "mnt", series=cohort, endpoint_url=proxy.url, cache_dir=base / "cache"
                    ) as mount:
                        proxy.log.clear()
                        started = time.perf_counter()
                        table = map_series(client, read_series, cohort, mount.mountpoint)
                        times.append(time.perf_counter() - started)
                        requests = proxy.log.count()
                    failed = table[table["error"].notna()]
                    if len(failed) or table["files"].sum() != sum(len(series.files) for series in info["small"]):
                        raise RuntimeError(f"map_series failed: {failed.head()}")
            seconds = sorted(times)[len(times) // 2]
            first = first or seconds
            print(f"  {workers} worker(s): {seconds:.2f} s, {requests} requests", flush=True)
            rows.append(
                (
                    f"map_series, {len(cohort)} series ({sum(len(s.files) for s in info['small'])} files), cold mount",
                    f"{workers}",
                    f"{seconds:.2f} s",
                    f"{len(cohort) / seconds:.1f}",
                    f"{first / seconds:.2f}x",
                    f"{requests}",
                )
            )
    return rows
