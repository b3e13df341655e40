"""The idc:// face beside its peers in Python: fsspec's s3fs on the raw UUID keys (what a Colab
user has without idcfs), the FUSE mount and s5cmd, all through one proxy adding latency per
request to one local S3 server, the same generated objects as scripts/bench_io.py.

Rows (the median of ``runs``; every cold run starts from an empty cache and a new filesystem
instance, the catalog snapshot built once beforehand):

- h. a cold 200-file CT series read file by file (``cat_file`` in a loop; ``cat`` on the mount),
  and all at once (``fs.cat(list)``: s3fs's is concurrent, idc://'s reads eight at a time);
- i. 2,000 random 64 KiB reads in a 1 GB object, cold (idc://'s file; s3fs's with fsspec's
  block cache; the mount with ``pread``);
- j. the series re-read in a new Python process with the cache of an earlier one (idc:// on
  its cache folder; s3fs under fsspec's persistent ``filecache``; the process's start included).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_io import (
    BIG_RANDOM,
    CT_SERIES,
    SM_SERIES,
    Idcfs,
    Measure,
    bench_proxy,
    cat_one_by_one,
    prepare_data,
    random_reads,
    s5cmd_copy,
    warm_server_etags,
)

from tests.testbed.servers import s3_server

BUCKET = "idc-open-data"
RANDOM_READS, READ_SIZE = 2000, 64 << 10


def idc_fs(endpoint: str, cache: Path, catalogs: Path, **options: Any) -> Any:
    from idcfs.fsspec import IdcFileSystem

    where = {"endpoint_url": endpoint, "cache_dir": cache, "catalog_dir": catalogs, "cache_size": "8G"}
    return IdcFileSystem(skip_instance_cache=True, **where, **options)


def s3_fs(endpoint: str) -> Any:
    import s3fs

    return s3fs.S3FileSystem(anon=True, endpoint_url=endpoint, skip_instance_cache=True)


def read_each(fs: Any, paths: list[str]) -> None:
    for path in paths:
        fs.cat_file(path)


def read_at_random(fs: Any, path: str, **open_options: Any) -> None:
    import random

    rng = random.Random(1)
    with fs.open(path, "rb", **open_options) as handle:
        size = handle.size
        for _ in range(RANDOM_READS):
            handle.seek(rng.randrange(0, size - READ_SIZE))
            if len(handle.read(READ_SIZE)) != READ_SIZE:
                raise RuntimeError("short read")


#: A new process re-reading a series: idc:// on a cache folder, or s3fs under fsspec's filecache.
REREAD = """
import sys, fsspec
kind, endpoint, cache, catalogs, *paths = sys.argv[1:]
if kind == "idc":
    fs = fsspec.filesystem("idc", endpoint_url=endpoint, cache_dir=cache, catalog_dir=catalogs, cache_size="8G")
else:
    fs = fsspec.filesystem("filecache", target_protocol="s3", cache_storage=cache,
                           target_options={"anon": True, "endpoint_url": endpoint})
for path in paths:
    fs.cat_file(path)
"""


def reread(kind: str, endpoint: str, cache: Path, catalogs: Path, paths: list[str]) -> None:
    subprocess.run([sys.executable, "-c", REREAD, kind, endpoint, str(cache), str(catalogs), *paths], check=True)


def bench_fsspec(runs: int, latency: float, bandwidth: float | None, workdir: Path) -> list[tuple[str, ...]]:
    info = prepare_data(workdir / "data")
    ct = info["ct"]
    with (
        s3_server(info["data"], log_path=workdir / "rclone-serve.log") as server,
        bench_proxy(server.url, latency, bandwidth) as proxy,
    ):
        endpoint = proxy.url
        warm_server_etags(server.url, [CT_SERIES, SM_SERIES])
        measure = Measure(proxy, runs)
        scratch = Path(tempfile.mkdtemp(prefix="bench-fsspec-", dir=workdir))
        catalogs = scratch / "catalogs"
        idc_fs(endpoint, scratch / "warm-up", catalogs).ls("")  # the catalog snapshot, once, untimed
        names = sorted(p.name for p in (info["data"] / BUCKET / CT_SERIES).iterdir())
        idc_paths = [f"{ct.path}/{name}" for name in names]
        raw_keys = [f"{BUCKET}/{CT_SERIES}/{name}" for name in names]
        big_idc, big_raw = f"{info['sm_path']}/{BIG_RANDOM}", f"{BUCKET}/{SM_SERIES}/{BIG_RANDOM}"
        results: dict[str, dict[str, tuple[float, int, int]]] = {}
        state: dict[str, Any] = {}

        def add(workload: str, tool: str, value: tuple[float, int, int]) -> None:
            results.setdefault(workload, {})[tool] = value
            counts = f"{value[1]:6d} req  {value[2] / 1e6:9.1f} MB"
            print(f"  {workload:44} {tool:22} {value[0]:8.3f} s  {counts}", flush=True)

        def fresh_idc(**options: Any) -> None:
            if "fs" in state:
                state["fs"].vfs.close()
            shutil.rmtree(scratch / "cache", ignore_errors=True)
            state["fs"] = idc_fs(endpoint, scratch / "cache", catalogs, **options)
            state["fs"].ls("")  # the tree loaded (a fraction of a second): reads are what is timed

        def fresh_s3() -> None:
            state["s3"] = s3_fs(endpoint)

        series_rows = "h. cold 200-file series, file by file"
        all_rows = "h. cold 200-file series, all at once"
        random_rows = "i. 2000 random 64 KiB reads in 1 GB, cold"
        add(series_rows, "idc://", measure(fresh_idc, lambda: read_each(state["fs"], idc_paths)))
        add(all_rows, "idc://", measure(fresh_idc, lambda: state["fs"].cat(idc_paths)))
        add(random_rows, "idc://", measure(fresh_idc, lambda: read_at_random(state["fs"], big_idc)))
        add(series_rows, "s3fs (raw keys)", measure(fresh_s3, lambda: read_each(state["s3"], raw_keys)))
        add(all_rows, "s3fs (raw keys)", measure(fresh_s3, lambda: state["s3"].cat(raw_keys)))
        add(random_rows, "s3fs, block cache", measure(
            fresh_s3, lambda: read_at_random(state["s3"], big_raw, cache_type="blockcache")
        ))  # fmt: skip

        with tempfile.TemporaryDirectory(prefix="bench-s5cmd-", dir=workdir) as target:

            def clean() -> None:
                for child in Path(target).iterdir():
                    child.unlink()

            copy = measure(clean, lambda: s5cmd_copy(endpoint, f"s3://{BUCKET}/{CT_SERIES}/*", Path(target)))
            add(series_rows, "s5cmd cp", copy)

        mount, mount_cache = Idcfs(), scratch / "mount-cache"

        def fresh_mount() -> None:
            mount.unmount() if hasattr(mount, "root") else None
            shutil.rmtree(mount_cache / "blocks", ignore_errors=True)
            shutil.rmtree(mount_cache / "listings", ignore_errors=True)
            mount.mount(endpoint, mount_cache)

        try:
            add(series_rows, "mount (cat)", measure(fresh_mount, lambda: cat_one_by_one(mount.root / ct.path)))
            add(random_rows, "mount (pread)", measure(
                fresh_mount, lambda: random_reads(mount.root / info["sm_path"] / BIG_RANDOM)
            ))  # fmt: skip
        finally:
            mount.unmount()

        warm_rows = "j. warm series re-read, new process"
        idc_cache, file_cache = scratch / "reread-idc", scratch / "reread-filecache"
        reread("idc", endpoint, idc_cache, catalogs, idc_paths)
        reread("s3", endpoint, file_cache, catalogs, raw_keys)
        for kind, tool, cache, paths in (
            ("idc", "idc://", idc_cache, idc_paths),
            ("s3", "s3fs + filecache", file_cache, raw_keys),
        ):
            add(warm_rows, tool, measure(None, lambda k=kind, c=cache, p=paths: reread(k, endpoint, c, catalogs, p)))
        if "fs" in state:
            state["fs"].vfs.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return _table(results)


def _table(results: dict[str, dict[str, tuple[float, int, int]]]) -> list[tuple[str, ...]]:
    rows = []
    for workload, by_tool in sorted(results.items()):
        ours = by_tool.get("idc://")
        for tool, (seconds, requests, fetched) in by_tool.items():
            ratio = f"{ours[0] / seconds:.2f}x" if ours and tool != "idc://" else ""
            rows.append((workload, tool, f"{seconds:.3f} s", ratio, str(requests), f"{fetched / 1e6:.1f} MB"))
    return rows
