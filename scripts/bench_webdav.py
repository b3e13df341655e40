"""``idcfs serve`` under load and beside its peers, on the objects of scripts/bench_io.py, one local
S3 server behind one proxy adding latency per request.

Rows:

- k. a 200-file CT series, cold (a new server, an empty cache) and warm (read again, the median
  of ``WARM_READS`` reads): through the share with 8 parallel ``curl`` processes (keep-alive, 25
  files each), beside ``rclone serve webdav`` (its S3 backend, VFS cache ``full``) read the same
  way, the server's CPU per file beside each; the FUSE mount with 8 parallel ``cat``, and
  s5cmd's download, cold;
- l. PROPFIND (Depth 1) of IDC's largest folder (``nlst``: ~26k patients): streamed (idcfs's
  own answer) and built whole (wsgidav's, which a conditional header still takes), the share's
  RSS before and its peak while answering, sampled every 20 ms (streamed first: memory Python
  took for the whole answer stays with the process);
- m. load: ``CLIENTS`` readers, each reading its own series file by file over and over for
  ``SECONDS``: bytes checked against the local files, errors counted, the share's RSS sampled
  every second (bounded and flat is the goal).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

from bench_io import (
    CT_SERIES,
    IDCFS,
    Idcfs,
    bench_proxy,
    cat_parallel,
    prepare_data,
    s5cmd_series_times,
    warm_server_etags,
)

from tests.testbed.proxy import CountingProxy
from tests.testbed.servers import free_port, rclone_binary, s3_server

CLIENTS = 32
SECONDS = 30.0
#: Warm re-reads of the series per run, their median its warm time (one read of 0.1 s is noise).
WARM_READS = 5


class Served:
    """A running ``idcfs serve`` on a free loopback port."""

    def __init__(self, endpoint: str, cache: Path, catalogs: Path, *options: str) -> None:
        self.port = free_port()
        self.log = cache.parent / f"serve-{self.port}.log"
        cache.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "IDCFS_CATALOG_DIR": str(catalogs)}
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [IDCFS, "serve", "--listen", f"127.0.0.1:{self.port}", "--endpoint-url", endpoint,
                 "--cache-dir", str(cache), "--cache-size", "8G", *options],
                stdout=out, stderr=subprocess.STDOUT, env=environment,
            )  # fmt: skip
        deadline = time.monotonic() + 300
        while "serving IDC" not in self.log.read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"idcfs serve did not start: {self.log.read_text()}")
            time.sleep(0.1)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def get(self, path: str) -> bytes:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request("GET", "/" + quote(path))
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise OSError(f"GET {path}: {response.status}")
            return body
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class RcloneServed:
    """``rclone serve webdav`` of the bucket through the same proxy: files at ``/<uuid>/<name>``,
    its VFS cache full (what it reads, it keeps on disk), server mtimes (no HEAD per file)."""

    def __init__(self, endpoint: str, cache: Path) -> None:
        self.port = free_port()
        cache.mkdir(parents=True, exist_ok=True)
        self.log = cache.parent / f"rclone-webdav-{self.port}.log"
        remote = f":s3,provider=Other,endpoint='{endpoint}',env_auth=false:idc-open-data"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [rclone_binary(), "serve", "webdav", remote, "--addr", f"127.0.0.1:{self.port}", "--read-only",
                 "--config", "/dev/null", "--vfs-cache-mode", "full", "--cache-dir", str(cache),
                 "--use-server-modtime", "--no-checksum"],
                stdout=out, stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"},
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("OPTIONS", "/")
                connection.getresponse().read()
                connection.close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"rclone serve webdav did not start: {self.log.read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def curl_parallel(urls: list[str], readers: int = 8) -> float:
    """Seconds for ``readers`` curl processes (keep-alive) to GET ``urls``, failing on any error."""
    started = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(readers), "-n", str(-(-len(urls) // readers)), "curl", "-sSf"],
        input="\n".join(urls).encode(),
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def bench_webdav(runs: int, latency: float, bandwidth: float | None, workdir: Path) -> list[tuple[str, ...]]:
    info = prepare_data(workdir / "data")
    ct, small = info["ct"], info["small"]
    rows: list[tuple[str, ...]] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-webdav-", dir=workdir))
    catalogs = scratch / "catalogs"
    with (
        s3_server(info["data"], log_path=workdir / "rclone-serve.log") as server,
        bench_proxy(server.url, latency, bandwidth) as proxy,
    ):
        warm_server_etags(server.url, [CT_SERIES, *(s.crdc_series_uuid for s in small)])
        names = sorted(p.name for p in (info["data"] / "idc-open-data" / CT_SERIES).iterdir())

        def series_cold_and_warm(start, path: str) -> tuple[float, float, float, float]:
            """Cold and warm seconds, and the server's CPU milliseconds per file for each."""
            server = start(scratch / "cold")
            try:
                urls = [f"http://127.0.0.1:{server.port}/{quote(path)}/{name}" for name in names]
                proxy.log.clear()
                cpu = cpu_seconds(server.process.pid)
                cold = curl_parallel(urls)
                cpu_cold = cpu_seconds(server.process.pid) - cpu
                time.sleep(1)  # what the server writes behind the cold read, done
                cpu = cpu_seconds(server.process.pid)
                warm = statistics.median(curl_parallel(urls) for _ in range(WARM_READS))
                cpu_warm = (cpu_seconds(server.process.pid) - cpu) / WARM_READS
            finally:
                server.stop()
                shutil.rmtree(scratch / "cold", ignore_errors=True)
            return cold, warm, cpu_cold * 1000 / len(names), cpu_warm * 1000 / len(names)

        Served(proxy.url, scratch / "warm-up", catalogs).stop()  # the catalog, once, untimed
        peers = (
            ("idcfs serve (8 curl)", lambda cache: Served(proxy.url, cache, catalogs), ct.path),
            ("rclone serve webdav (8 curl)", lambda cache: RcloneServed(proxy.url, cache), CT_SERIES),
        )
        measured: dict[str, list[tuple[float, float, float, float]]] = {tool: [] for tool, _, _ in peers}
        for _ in range(runs):  # interleaved: the machine's moods fall on both
            for tool, start, path in peers:
                measured[tool].append(series_cold_and_warm(start, path))
        for tool, _, _ in peers:
            rows.append(_share_row(tool, measured[tool], proxy))
        mount = Idcfs()
        mount_times = []
        for _ in range(runs):
            shutil.rmtree(scratch / "mount-cache", ignore_errors=True)
            mount.mount(proxy.url, scratch / "mount-cache")
            proxy.log.clear()
            started = time.perf_counter()
            cat_parallel(mount.root / ct.path)
            mount_times.append(time.perf_counter() - started)
            mount.unmount()
        rows.append(_row("idcfs mount (cat)", mount_times, proxy))
        rows.append(_row("s5cmd cp", s5cmd_series_times(proxy, workdir, runs), proxy))

        served = Served(proxy.url, scratch / "load", catalogs)
        try:
            for how, headers in (("streamed", {}), ("built whole (wsgidav)", {"If-None-Match": '"none"'})):
                rows.append(_propfind(served, how, {"Depth": "1", **headers}, runs))
            rows.append(_load(served, info, small + [ct]))
        finally:
            served.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    return rows


def _propfind(served: Served, how: str, headers: dict[str, str], runs: int) -> tuple[str, ...]:
    before = served.rss_kib()
    peak, times, body = before, [], b""
    answering = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not answering.wait(0.02):
            peak = max(peak, served.rss_kib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _ in range(runs):
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=120)
            connection.request("PROPFIND", "/nlst/", headers=headers)
            body = connection.getresponse().read()
            connection.close()
            times.append(time.perf_counter() - started)
    finally:
        answering.set()
        sampler.join()
    entries = body.count(b"<D:response")
    return (f"l. PROPFIND Depth 1 of nlst, {how}", f"{entries:,} entries, {len(body) / 1e6:.1f} MB",
            f"{statistics.median(times):.3f} s", f"RSS {before // 1024} MiB before",
            f"peak {peak // 1024} MiB")  # fmt: skip


def _share_row(tool: str, runs: list[tuple[float, float, float, float]], proxy: CountingProxy) -> tuple[str, ...]:
    """A row of k for a share: median cold and warm seconds, and CPU per file for each."""
    cold, warm, cpu_cold, cpu_warm = (statistics.median(column) for column in zip(*runs, strict=True))
    return ("k. 200-file series, 8 parallel readers", tool, f"cold {cold:.3f} s, warm {warm:.3f} s",
            f"CPU/file {cpu_cold:.1f} / {cpu_warm:.1f} ms",
            f"{proxy.log.count()} requests (last run, cold + warm)")  # fmt: skip


def _row(tool: str, times: list[float], proxy: CountingProxy) -> tuple[str, ...]:
    """A row of k: the median time, and the last run's requests and bytes."""
    workload = "k. cold 200-file series, 8 parallel readers"
    fetched = f"{proxy.log.body_bytes / 1e6:.1f} MB"
    return (workload, tool, f"{statistics.median(times):.3f} s", str(proxy.log.count()), fetched)


def _load(served: Served, info: dict, series: list) -> tuple[str, ...]:
    """``CLIENTS`` readers for ``SECONDS``, each on its own series (round robin over ``series``)."""
    data = info["data"] / "idc-open-data"
    expected = {
        (s.path, f.name): hashlib.sha256((data / s.crdc_series_uuid / f.name).read_bytes()).digest()
        for s in series
        for f in s.files
    }
    counts = {"files": 0, "bytes": 0, "wrong": 0, "errors": 0}
    lock = threading.Lock()
    stop = time.monotonic() + SECONDS

    def reader(k: int) -> None:
        own = series[k % len(series)]
        while time.monotonic() < stop:
            for f in own.files:
                try:
                    body = served.get(f"{own.path}/{f.name}")
                except OSError:
                    with lock:
                        counts["errors"] += 1
                    continue
                with lock:
                    counts["files"] += 1
                    counts["bytes"] += len(body)
                    counts["wrong"] += hashlib.sha256(body).digest() != expected[(own.path, f.name)]

    samples = []
    threads = [threading.Thread(target=reader, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        samples.append(served.rss_kib() // 1024)
        time.sleep(1)
    for thread in threads:
        thread.join()
    return (f"m. {CLIENTS} clients for {SECONDS:.0f} s", f"{counts['files']:,} files, {counts['bytes'] / 1e6:.0f} MB",
            f"{counts['wrong']} wrong, {counts['errors']} errors",
            f"RSS {min(samples)}-{max(samples)} MiB", f"last {samples[-1]} MiB")  # fmt: skip
