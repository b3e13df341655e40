"""``--volumes``: a series' NIfTI volume through idcfs beside the way a user makes it today, on the
200-file CT series of scripts/bench_io.py, one local S3 server behind one proxy adding latency per
request.

Rows (the median of ``runs``; each run interleaves the ways, every idcfs run on an empty cache
folder, the catalog snapshot built once beforehand):

- r. first use, cold: from a fresh mount (``--volumes``) to having read
  ``<series>.nifti/<SERIES>.nii.gz`` whole (the build happens on the way), beside ``s5cmd cp`` of
  the series into an empty folder then ``dcm2niix -z y`` on it (the wheel's binary: without pigz
  on PATH it gzips with its own code, one thread). The parts of idcfs's build are seen from
  outside by watching its work folder (``CACHE/volumes/<key>.<pid>.<tid>/``): the series fetched
  (``in/`` holding all its bytes), the child started (``out/`` made), dcm2niix done
  (``out/series.nii.gz`` begun), idcfs's gzip done (``pack`` begun), the pack sealed and adopted
  by the disk cache (the folder gone), the read; and the daemon's own "built in" log line;
- s. the built volume opened again and read whole: through the mount and from local disk (the
  ``.nii.gz`` dcm2niix wrote), with the page cache as the first use left it, then after
  ``drop_caches`` (root only) before each read; ``REREADS`` reads of each a run (they take
  milliseconds), the mount's and the local file's in turn;
- t. the first use through ``idc://`` (``volumes=True``, ``cat_file``), cold, in this process,
  the opening of its tree (the catalog snapshot mapped) included;
- u. the parts alone, once: dcm2niix without compression on the local copy, idcfs's gzip of its
  ``.nii``, and zlib's level 6 on one thread (gzip's default) of the same file.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from bench_io import (
    CT_SERIES,
    Floor,
    Idcfs,
    bench_proxy,
    drop_page_cache,
    prepare_data,
    s5cmd_copy,
    warm_server_etags,
)

from tests.testbed.servers import s3_server

#: Read size of a whole-file read (like ``cat``'s, larger).
CHUNK = 1 << 20
#: How often the build's work folder is looked at.
POLL = 0.01
#: The stages of a build, as seen in its work folder, in order.
STAGES = ("fetched", "child", "dcm2niix", "gzip", "kept")
#: Whole reads of the built volume per condition and run (they take milliseconds): their median.
REREADS = 5


def read_whole(path: Path | str) -> int:
    """Bytes of ``path``, read to the end (``cat > /dev/null``)."""
    count = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK):
            count += len(chunk)
    return count


def timed_read(path: Path) -> float:
    started = time.perf_counter()
    read_whole(path)
    return time.perf_counter() - started


def dcm2niix_binary() -> str:
    import dcm2niix

    return str(dcm2niix.bin)


class BuildWatch:
    """When a build's stages end, from its work folder under ``volumes`` (perf_counter times)."""

    def __init__(self, volumes: Path, series_bytes: int) -> None:
        self.volumes = volumes
        self.series_bytes = series_bytes
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        work: Path | None = None
        while not self._stop.wait(POLL):
            now = time.perf_counter()
            if work is None:
                try:
                    work = next((p for p in self.volumes.iterdir() if p.is_dir()), None)
                except OSError:
                    continue
                if work is None:
                    continue
            if not work.exists():
                self.seen.setdefault("kept", now)
                return
            try:
                if "fetched" not in self.seen:
                    with os.scandir(work / "in") as entries:
                        if sum(e.stat().st_size for e in entries) >= self.series_bytes:
                            self.seen["fetched"] = now
                if (work / "out").exists():
                    self.seen.setdefault("fetched", now)
                    self.seen.setdefault("child", now)
                if (work / "out" / "series.nii.gz").exists():
                    self.seen.setdefault("dcm2niix", now)
                if (work / "pack").exists():
                    self.seen.setdefault("gzip", now)
            except OSError:
                continue

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.seen


def stages(started: float, seen: dict[str, float], ended: float) -> dict[str, float]:
    """Seconds of each stage (and the read after the last), from the times the watch saw."""
    spans, before = {}, started
    for stage in STAGES:
        if stage in seen:
            spans[stage] = seen[stage] - before
            before = seen[stage]
    spans["read"] = ended - before
    return spans


def built_seconds(log_file: Path) -> float | None:
    """The daemon's "volume of ... built in X s" figure, or None."""
    found = re.findall(r"volume of \S+ built in ([0-9.]+)s", log_file.read_text(errors="replace"))
    return float(found[-1]) if found else None


def leftovers(cache: Path) -> list[str]:
    """What a finished build left in the cache's ``volumes`` folder."""
    folder = cache / "volumes"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def bench_volumes(runs: int, latency: float, bandwidth: float | None, workdir: Path) -> list[tuple[str, ...]]:
    info = prepare_data(workdir / "data")
    ct = info["ct"]
    base = ct.path.rsplit("/", 1)[1]
    volume = f"{ct.path}.nifti/{base}.nii.gz"
    source = info["data"] / "idc-open-data" / CT_SERIES
    series_bytes = sum(p.stat().st_size for p in source.iterdir())
    pigz = shutil.which("pigz")
    scratch = Path(tempfile.mkdtemp(prefix="bench-volumes-", dir=workdir))
    catalogs = scratch / "catalogs"
    dropped = drop_page_cache()  # root: the re-reads are also measured after a drop
    measured: dict[str, list[Any]] = {}
    same = False

    def add(name: str, value: Any) -> None:
        measured.setdefault(name, []).append(value)

    with (
        s3_server(info["data"], log_path=workdir / "rclone-serve.log") as server,
        bench_proxy(server.url, latency, bandwidth) as proxy,
    ):
        warm_server_etags(server.url, [CT_SERIES])
        mount = Idcfs()
        mount.mount(proxy.url, scratch / "warm-up", "--catalog-dir", str(catalogs))  # the catalog, once, untimed
        mount.unmount()
        shutil.rmtree(scratch / "warm-up", ignore_errors=True)
        local = scratch / "local"
        for run in range(runs):
            # Today's way: s5cmd cp, then dcm2niix -z y.
            shutil.rmtree(local, ignore_errors=True)
            (local / "in").mkdir(parents=True)
            (local / "out").mkdir()
            os.sync()
            proxy.log.clear()
            started = time.perf_counter()
            s5cmd_copy(proxy.url, f"s3://idc-open-data/{CT_SERIES}/*", local / "in")
            copied = time.perf_counter()
            subprocess.run(
                [dcm2niix_binary(), "-z", "y", "-f", "x", "-o", str(local / "out"), str(local / "in")],
                capture_output=True,
                check=True,
            )
            ended = time.perf_counter()
            add("local", (ended - started, copied - started, ended - copied, proxy.log.count()))
            local_volume = local / "out" / "x.nii.gz"
            (local / "floor" / "idc-open-data").mkdir(parents=True)
            os.link(local_volume, local / "floor" / "idc-open-data" / "x.nii.gz")

            # The mount: a fresh cache folder, then the volume read whole.
            cache = scratch / "mount-cache"
            shutil.rmtree(cache, ignore_errors=True)
            mount.mount(proxy.url, cache, "--volumes", "--catalog-dir", str(catalogs))
            try:
                path = mount.root / volume
                os.sync()
                proxy.log.clear()
                watch = BuildWatch(cache / "volumes", series_bytes)
                started = time.perf_counter()
                size = read_whole(path)
                ended = time.perf_counter()
                spans = stages(started, watch.stop(), ended)
                add("mount", (ended - started, spans, built_seconds(cache / "idcfs.log"), proxy.log.count(),
                              proxy.log.body_bytes, size))  # fmt: skip
                if run == 0:
                    same = _same_voxels(path, local_volume)
                # Opened again, with the page cache as it is (the mount keeps it: kernel_cache),
                # then after a drop before each read; the mount, the local file and the FUSE
                # floor (scripts/floorfs.py serving the local file) in turn. The pack's own
                # file in the disk cache, read directly, is what the mount's reads come from.
                floor = Floor(local / "floor")
                floor.mount("", None)
                try:
                    _reread(add, cache, dropped, path, local_volume, floor.root / "x.nii.gz")
                finally:
                    floor.unmount()
                    with contextlib.suppress(OSError):
                        floor.root.rmdir()  # the mount point (empty once unmounted)
            finally:
                mount.unmount()
            add("mount left", leftovers(cache))
            add("disk cache", sum(p.stat().st_size for p in (cache / "blocks").rglob("*") if p.is_file()))
            add("local gz", local_volume.stat().st_size)

            # idc://, in this process.
            cache = scratch / "idc-cache"
            shutil.rmtree(cache, ignore_errors=True)
            os.sync()
            proxy.log.clear()
            watch = BuildWatch(cache / "volumes", series_bytes)
            started = time.perf_counter()
            fs = _idc_fs(proxy.url, cache, catalogs)
            data = fs.cat_file(volume)
            ended = time.perf_counter()
            fs.vfs.close()
            add("idc", (ended - started, stages(started, watch.stop(), ended), proxy.log.count(), len(data)))
            add("idc left", leftovers(cache))
            del data
        parts = _parts(local)
        with contextlib.suppress(OSError):
            mount.root.rmdir()
    shutil.rmtree(scratch, ignore_errors=True)
    return _rows(measured, parts, pigz, dropped, same, series_bytes)


def _reread(add: Any, cache: Path, dropped: bool, path: Path, local_volume: Path, floor_file: Path) -> None:
    """Row s's reads, ``REREADS`` of each: the page cache as it is, then dropped before each."""
    read_whole(floor_file)
    where = {"mount": path, "local": local_volume, "floor": floor_file}
    for _ in range(REREADS):
        for name, file in where.items():
            add(f"{name} again", timed_read(file))
    pack = max((p for p in (cache / "blocks").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    for _ in range(REREADS if dropped else 0):
        for name, file in {**where, "pack": pack}.items():
            drop_page_cache()
            add(f"{name} dropped", timed_read(file))


def _idc_fs(endpoint: str, cache: Path, catalogs: Path) -> Any:
    from idcfs.fsspec import IdcFileSystem

    return IdcFileSystem(skip_instance_cache=True, endpoint_url=endpoint, cache_dir=cache, catalog_dir=catalogs,
                         cache_size="8G", volumes=True)  # fmt: skip


def _same_voxels(ours: Path, theirs: Path) -> bool:
    """Whether two .nii.gz files hold the same .nii bytes."""
    return gzip.decompress(Path(ours).read_bytes()) == gzip.decompress(theirs.read_bytes())


def _parts(local: Path) -> dict[str, float]:
    """The build's steps alone on the local copy, once: dcm2niix without compression, idcfs's
    gzip of its .nii, and zlib level 6 on one thread."""
    from idcfs.derived import child, nifti

    out = local / "parts"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    started = time.perf_counter()
    subprocess.run([dcm2niix_binary(), *child.DCM2NIIX_OPTIONS, "-o", str(out), str(local / "in")],
                   capture_output=True, check=True)  # fmt: skip
    converted = time.perf_counter() - started
    nii = out / "series.nii"
    started = time.perf_counter()
    nifti.gzip_file(nii, out / "idcfs.nii.gz")
    ours = time.perf_counter() - started
    raw = nii.read_bytes()
    started = time.perf_counter()
    deflated = zlib.compress(raw, 6)
    level6 = time.perf_counter() - started
    return {
        "dcm2niix -z n": converted,
        "idcfs gzip": ours,
        "zlib 6": level6,
        "nii MB": len(raw) / 1e6,
        "idcfs gz MB": (out / "idcfs.nii.gz").stat().st_size / 1e6,
        "zlib 6 MB": len(deflated) / 1e6,
    }


def _median_spans(spans: list[dict[str, float]]) -> str:
    names = [s for s in (*STAGES, "read") if all(s in one for one in spans)]
    labels = {"fetched": "fetch", "child": "child start", "dcm2niix": "dcm2niix", "gzip": "gzip",
              "kept": "pack+seal+adopt", "read": "read"}  # fmt: skip
    return " + ".join(f"{labels[n]} {statistics.median(one[n] for one in spans):.2f}" for n in names) + " s"


def _rows(m: dict[str, list[Any]], parts: dict[str, float], pigz: str | None, dropped: bool, same: bool,
          series_bytes: int) -> list[tuple[str, ...]]:  # fmt: skip
    med = statistics.median
    rows: list[tuple[str, ...]] = []
    first = "r. first use of the 200-file CT volume, cold"
    local_total = med(r[0] for r in m["local"])
    mount_total = med(r[0] for r in m["mount"])
    idc_total = med(r[0] for r in m["idc"])
    built = [r[2] for r in m["mount"] if r[2] is not None]
    left = sorted({name for names in m["mount left"] + m["idc left"] for name in names})
    size = m["mount"][-1][5]
    rows.append((
        first, "idcfs mount --volumes (read .nii.gz whole)", f"{mount_total:.2f} s",
        f"{mount_total / local_total:.2f}x (goal <= 1.2x)",
        f"{_median_spans([r[1] for r in m['mount']])}; log: built in {med(built) if built else float('nan'):.1f} s; "
        f"{m['mount'][-1][3]} requests, {m['mount'][-1][4] / 1e6:.1f} MB; .nii.gz {size / 1e6:.1f} MB, "
        f".nii {'the same as' if same else 'NOT the same as'} dcm2niix's; "
        f"left in volumes/: {', '.join(left) or 'nothing'}; disk cache after: {m['disk cache'][-1] / 1e6:.0f} MB",
    ))  # fmt: skip
    gzip_how = f"pigz on PATH ({pigz})" if pigz else "pigz not on PATH: dcm2niix's own gzip, one thread"
    rows.append((
        first, "s5cmd cp + dcm2niix -z y", f"{local_total:.2f} s", "1.00x",
        f"s5cmd {med(r[1] for r in m['local']):.2f} + dcm2niix {med(r[2] for r in m['local']):.2f} s ({gzip_how}); "
        f"{m['local'][-1][3]} requests; {series_bytes / 1e6:.1f} MB of DICOM; .nii.gz {m['local gz'][-1] / 1e6:.1f} MB",
    ))  # fmt: skip
    conditions = [("page cache as left", "again")] + ([("after drop_caches", "dropped")] if dropped else [])
    for condition, key in conditions:
        ours, theirs = med(m[f"mount {key}"]), med(m[f"local {key}"])
        workload = f"s. the built volume re-opened and read whole, {condition}"
        pack = (
            f"the pack's file in the disk cache read directly: {med(m['pack dropped']):.3f} s"
            if key == "dropped"
            else ""
        )
        rows.append((workload, "idcfs mount", f"{ours:.3f} s", f"{ours / theirs:.2f}x (goal <= 1.2x)", pack))
        rows.append((workload, "local disk (dcm2niix's .nii.gz)", f"{theirs:.3f} s", "1.00x", ""))
        floor = med(m[f"floor {key}"])
        rows.append((workload, "FUSE floor (floorfs.py over that file)", f"{floor:.3f} s", f"{floor / theirs:.2f}x",
                     f"idcfs mount {ours / floor:.2f}x the floor"))  # fmt: skip
    if not dropped:
        rows.append(("s. after drop_caches", "(skipped)", "", "", "not root: the page cache cannot be dropped"))
    rows.append((
        "t. first use through idc://, cold", "idc:// volumes=True (cat_file)", f"{idc_total:.2f} s",
        f"{idc_total / local_total:.2f}x s5cmd + dcm2niix",
        f"{_median_spans([r[1] for r in m['idc']])}; {m['idc'][-1][2]} requests",
    ))  # fmt: skip
    rows.append((
        "u. the parts alone, once, on the local copy", "dcm2niix -z n / idcfs gzip / zlib 6, one thread",
        f"{parts['dcm2niix -z n']:.2f} / {parts['idcfs gzip']:.2f} / {parts['zlib 6']:.2f} s", "",
        f".nii {parts['nii MB']:.1f} MB -> {parts['idcfs gz MB']:.1f} MB (idcfs, level {_gzip_level()}) / "
        f"{parts['zlib 6 MB']:.1f} MB (level 6)",
    ))  # fmt: skip
    return rows


def _gzip_level() -> int:
    from idcfs.derived import nifti

    return nifti.GZIP_LEVEL
