#!/usr/bin/env python3
"""Benchmarks of idcfs against its peers, measured in the same run: printed, and written as tables
to .bench/last-run.md (``--out``). bench/RESULTS.md is the kept record, written by hand from
such runs with what each measured and why: a run never overwrites it.

Speed is measured here, never asserted in tests. Each figure is the median of ``--runs`` runs.

Sections:
  reads    the read workloads of issue 3, for idcfs, s5cmd (the limit), s3fs-fuse, rclone mount and
           local disk, through one local S3 server (rclone serve s3) behind a proxy adding
           --latency per request: (a) cold series read with cat, file by file; (b) the same with 8
           parallel readers; (c) warm re-read after remount; (d) a 500 MB object read with dd
           bs=1M; (e) 2000 random 64 KiB reads in a 1 GB object, cold and warm; (f) ls -lR of 50
           series; (g) OpenSlide reading 500 random 256x256 level-0 regions of a generated DICOM
           whole-slide image (~310 MB level 0), cold and warm. Next to them the FUSE floor
           (scripts/floorfs.py: a trivial mfusepy file system serving the files from the page
           cache). Requests and bytes are counted at the proxy. Peers not installed are skipped.
  catalog  time from `idcfs mount` to a listable root (first start, and warm with the catalog
           snapshot), daemon RSS after listing 1,000 random study folders, readdir times of the
           root / the largest collection / a patient / a study; next to IDCClient()'s load time
           and RSS (idc-index), measured in the same run. Needs no storage server: no series
           folder is opened, and the endpoint given to the mounts never answers.
  dask     series per second of idcfs.dask.map_series over 1, 2 and 4 local worker processes, on
           the same 50-series cohort, each through a cold mount (see bench_dask.py).
  fsspec   idc:// in Python beside fsspec's s3fs on the raw UUID keys, the mount and s5cmd: a cold
           200-file series (file by file, and all at once), 2000 random 64 KiB reads in 1 GB,
           the warm re-read in a new process (s3fs under fsspec's filecache); see bench_fsspec.py.
  webdav   idcfs serve: a 200-file series by 8 parallel HTTP readers, cold and warm, beside rclone serve
           webdav (server CPU per file for both), the mount and s5cmd (cold),
           PROPFIND of the 26k-entry nlst folder, 32 clients for 30 s (wrong bytes, errors, RSS);
           see bench_webdav.py.
  link     issue 21's link profile (LINK, default 100mbit,50ms, one line shared by all connections):
           a cold series, OpenSlide's 500 regions, a demand read behind a stream, the header read,
           idcfs beside s5cmd, s3fs-fuse and rclone mount; see bench_link.py.
  volumes  --volumes: the first use of a 200-file CT series' NIfTI volume (a cold mount, to the
           .nii.gz read whole) beside s5cmd cp + dcm2niix -z y, the built volume re-opened beside
           the same file on local disk (page cache as left, and dropped), the first use through
           idc://, and the build's parts (fetch, dcm2niix, gzip, the pack kept); see bench_volumes.py.
  dicomweb idcfs serve --dicomweb beside Orthanc holding the same files: QIDO study search, a
           200-instance series' /metadata cold and warm, 500 slide frames by 8 clients (warm), and
           OHIF's first image of a cold 200-file CT against s5cmd cp + upload to Orthanc + OHIF on
           Orthanc; see bench_dicomweb.py.
  scale    daemon CPU per file read in a 40-file and in IDC's 91,980-file series; peak daemon RSS
           during a find over 502,482 objects (tiny objects at real paths; see bench_scale.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The checkout: the test bed (tests/testbed: generated data, servers, proxy) is not installed.
sys.path.insert(0, str(REPO))
IDCFS = str(Path(sys.executable).with_name("idcfs"))
UNUSED_ENDPOINT = "http://127.0.0.1:9"  # discard port: a mount that never needs the network


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values)


class Mounted:
    """An idcfs mount made with the real CLI, timed from the command to a listable root."""

    def __init__(self, cache_dir: Path, *options: str) -> None:
        from idcfs.service.mounting import daemon_pid

        self.path = Path(tempfile.mkdtemp(prefix="idcfs-bench-"))
        started = time.perf_counter()
        result = subprocess.run(
            [
                IDCFS,
                "mount",
                str(self.path),
                "--endpoint-url",
                UNUSED_ENDPOINT,
                "--cache-dir",
                str(cache_dir),
                *options,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mount failed: {result.stderr}")
        os.listdir(self.path)
        self.ready_seconds = time.perf_counter() - started
        self.pid = daemon_pid(self.path)

    def close(self) -> None:
        subprocess.run([IDCFS, "umount", str(self.path)], check=False, capture_output=True)
        shutil.rmtree(self.path, ignore_errors=True)


def timed_listdir(path: Path) -> float:
    started = time.perf_counter()
    os.listdir(path)
    return time.perf_counter() - started


def random_studies(root: Path, count: int, rng: random.Random) -> list[Path]:
    """``count`` study folders spread over every collection (patients sampled per collection)."""
    studies: list[Path] = []
    collections = [c for c in os.listdir(root) if not c.startswith(".")]
    while len(studies) < count:
        collection = root / rng.choice(collections)
        patients = os.listdir(collection)
        patient = collection / rng.choice(patients)
        studies.extend(patient / s for s in os.listdir(patient))
    rng.shuffle(studies)
    return studies[:count]


def bench_catalog(runs: int) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    cold, warm, rss_after, readdir = [], [], [], {"root": [], "nlst (26k patients)": [], "a patient": [], "a study": []}
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="idcfs-bench-cache-") as cache:
            first = Mounted(Path(cache))
            cold.append(first.ready_seconds)
            first.close()
            mount = Mounted(Path(cache))
            warm.append(mount.ready_seconds)
            try:
                rng = random.Random(run)
                for study in random_studies(mount.path, 1000, rng):
                    os.listdir(study)
                rss_after.append(rss_kib(mount.pid) / 1024 if mount.pid else float("nan"))
                patient = mount.path / "nlst" / sorted(os.listdir(mount.path / "nlst"))[0]
                study = patient / sorted(os.listdir(patient))[0]
                for name, path in (
                    ("root", mount.path),
                    ("nlst (26k patients)", mount.path / "nlst"),
                    ("a patient", patient),
                    ("a study", study),
                ):
                    timed_listdir(path)  # first listing: fills idcfs' and the kernel's caches
                    readdir[name].append(median([timed_listdir(path) for _ in range(5)]))
            finally:
                mount.close()
    rows.append(
        ("idcfs mount -> root listable, first start (builds the catalog)", f"{median(cold):.2f} s", "target <= 5 s")
    )
    rows.append(
        ("idcfs mount -> root listable, warm (catalog snapshot mapped)", f"{median(warm):.2f} s", "target <= 1 s")
    )
    rows.append(
        ("daemon RSS after listing 1,000 random study folders", f"{median(rss_after):.0f} MB", "target <= 300 MB")
    )
    for name, values in readdir.items():
        rows.append((f"readdir {name}, warm", f"{median(values) * 1e3:.1f} ms", "target <= 50 ms"))
    rows.extend(bench_idcclient(runs))
    return rows


def bench_idcclient(runs: int) -> list[tuple[str, str, str]]:
    probe = (
        "import time, json; t = time.perf_counter(); from idc_index import IDCClient; IDCClient(); "
        "s = time.perf_counter() - t; "
        "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1]; "
        "print(json.dumps([s, int(rss)]))"
    )
    seconds, rss = [], []
    for _ in range(runs):
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            return [("IDCClient() (idc-index)", "skipped", "idc-index not installed: pip install idc-index")]
        took, kib = json.loads(result.stdout.strip().splitlines()[-1])
        seconds.append(took)
        rss.append(kib / 1024)
    return [
        ("peer: IDCClient() load (idc-index, pandas)", f"{median(seconds):.2f} s", "same index, same run"),
        ("peer: IDCClient() RSS", f"{median(rss):.0f} MB", "same index, same run"),
    ]


CATALOG_HEADER = ("measure", "result", "note")
READS_HEADER = ("workload", "tool", "time", "vs s5cmd", "vs local disk", "vs floor", "requests", "fetched")
DASK_HEADER = ("workload", "workers", "time", "series/s", "vs 1 worker", "requests")
FSSPEC_HEADER = ("workload", "tool", "time", "idc:// vs it", "requests", "fetched")
WEBDAV_HEADER = ("workload", "tool / what", "time / result", "requests / memory", "fetched / memory")
LINK_HEADER = ("workload", "tool", "time", "requests", "fetched")
DICOMWEB_HEADER = ("workload", "tool", "time", "against Orthanc", "notes")
VOLUMES_HEADER = ("workload", "tool", "time", "vs s5cmd + dcm2niix / local disk", "parts / notes")


def bench_workdir() -> Path:
    """Where the sections keep their generated data (git-ignored), made if missing."""
    workdir = REPO / ".bench"
    workdir.mkdir(exist_ok=True)
    return workdir


def bench_reads_section(args: argparse.Namespace) -> list[tuple[str, ...]]:
    from bench_io import bench_reads

    return bench_reads(args.runs, args.latency, args.bandwidth, bench_workdir())


def bench_scale_section(args: argparse.Namespace) -> list[tuple[str, ...]]:
    from bench_scale import bench_scale

    return bench_scale(bench_workdir())


def bench_fsspec_section(args: argparse.Namespace) -> list[tuple[str, ...]]:
    from bench_fsspec import bench_fsspec

    return bench_fsspec(args.runs, args.latency, args.bandwidth, bench_workdir())


def bench_webdav_section(args: argparse.Namespace) -> list[tuple[str, ...]]:
    from bench_webdav import bench_webdav

    return bench_webdav(args.runs, args.latency, args.bandwidth, bench_workdir())


def bench_link_section(args: argparse.Namespace) -> list[tuple[str, ...]]:
    from bench_link import bench_link

    return bench_link(args.runs, bench_workdir())


def bench_dask_section(args: argparse.Namespace) -> list[tuple[str, ...]]:
    from bench_dask import bench_dask

    return bench_dask(args.runs, args.latency, bench_workdir())


def bench_dicomweb_section(args: argparse.Namespace) -> list[tuple[str, ...]]:
    from bench_dicomweb import bench_dicomweb

    return bench_dicomweb(args.runs, args.latency, args.bandwidth, bench_workdir())


def bench_volumes_section(args: argparse.Namespace) -> list[tuple[str, ...]]:
    from bench_volumes import bench_volumes

    return bench_volumes(args.runs, args.latency, args.bandwidth, bench_workdir())


SECTIONS = {
    "reads": (READS_HEADER, bench_reads_section),
    "scale": (CATALOG_HEADER, bench_scale_section),
    "catalog": (CATALOG_HEADER, lambda args: bench_catalog(args.runs)),
    "dask": (DASK_HEADER, bench_dask_section),
    "fsspec": (FSSPEC_HEADER, bench_fsspec_section),
    "webdav": (WEBDAV_HEADER, bench_webdav_section),
    "link": (LINK_HEADER, bench_link_section),
    "volumes": (VOLUMES_HEADER, bench_volumes_section),
    "dicomweb": (DICOMWEB_HEADER, bench_dicomweb_section),
}


def machine() -> str:
    cpus = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.platform()}, {cpus} CPUs, {memory:.0f} GiB, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument(
        "--out", type=Path, default=REPO / ".bench" / "last-run.md", help="where the tables go (not bench/RESULTS.md)"
    )
    parser.add_argument("--latency", type=float, default=0.020, help="seconds the proxy adds per request")
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes/s cap per response (default none)")
    parser.add_argument(
        "--link",
        default=os.environ.get("LINK") or None,
        metavar="RATE,LATENCY",
        help="one line shared by all connections, e.g. 100mbit,50ms (a token bucket for the bandwidth, "
        "the latency per request): replaces --latency and --bandwidth [env LINK]",
    )
    args = parser.parse_args()
    if args.link:
        from tests.testbed.proxy import parse_link

        try:
            rate, args.latency = parse_link(args.link)
        except ValueError as error:
            parser.error(str(error))
        os.environ["BENCH_LINK"] = args.link  # every section's proxy (bench_io.bench_proxy)
        args.bandwidth = None
    lines = [
        "# idcfs benchmark results",
        "",
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}; "
        f"median of {args.runs} runs; `python scripts/bench.py {' '.join(args.sections)}`; "
        f"{args.latency * 1e3:.0f} ms added per request"
        + (f", {args.bandwidth / 1e6:.0f} MB/s per response" if args.bandwidth else "")
        + (f", one shared line of {args.link.split(',')[0]} (LINK={args.link})" if args.link else "")
        + ".",
    ]
    for section in args.sections:
        print(f"== {section}", flush=True)
        header, run = SECTIONS[section]
        rows = run(args)
        lines += ["", f"## {section}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in rows:
            print("  " + "  ".join(f"{cell:>12}" if i else f"{cell:45}" for i, cell in enumerate(row)))
            lines.append("| " + " | ".join(row) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
