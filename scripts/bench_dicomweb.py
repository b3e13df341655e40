"""``idcfs serve --dicomweb`` beside Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``, the
reference DICOMweb server) holding the same files, on the objects of scripts/bench_io.py, one
local S3 server behind one proxy adding latency per request.

Rows:

- n. QIDO-RS: a study search by PatientID as OHIF sends it (its ``includefield``), the median of
  ``QUERIES`` requests over one kept-alive connection, on a server that has run a while; idcfs
  searches its whole selection (nlst's 73k studies and the slide's collection), Orthanc the two
  studies it holds;
- o. a 200-instance CT series' ``/metadata``: idcfs cold (a new server, an empty cache: every
  header read through the proxy) and warm (the median of ``WARM_READS`` over one connection),
  Orthanc after a restart and warm;
- p. 500 frames of a slide's level 0 by 8 parallel clients (a request a frame, as Slim asks),
  warm, JPEG as stored;
- q. OHIF Viewer's time to the first image of the cold 200-file CT series (headless Chromium,
  ``tests/viewers/ohif.mjs``) through idcfs, against the way a user gets there today:
  ``s5cmd cp`` of the series, its upload to an empty Orthanc, then OHIF on Orthanc. Both viewers
  reach their server through the same local proxy (Orthanc sends no CORS headers).

``BENCH_DICOMWEB_ROWS=q`` runs row q alone (with ``--link``: the way there on a slower line).
Needs Debian's orthanc and orthanc-dicomweb (and for row q chromium, node and
scripts/install_viewers.sh); rows that cannot run say why.
"""

from __future__ import annotations

import functools
import http.client
import http.server
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
from bench_io import CT_SERIES, bench_proxy, prepare_data, s5cmd_copy, warm_server_etags
from bench_webdav import Served

from tests.testbed.servers import free_port, s3_server

QUERIES = 50
WARM_READS = 5
FRAMES = 500
FRAME_READERS = 8
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
REPO = Path(__file__).resolve().parent.parent
VIEWERS = REPO / ".testdata" / "viewers"
OHIF_INCLUDE = "00081030,00080060,00080090,00100030"
JPEG = 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'


class Orthanc:
    """A private Orthanc on a free loopback port, its storage in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bench",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "Plugins": [str(ORTHANC_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = folder / "orthanc.log"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                ["Orthanc", str(folder / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(self.port, "/system")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"Orthanc did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def upload(self, files: list[Path]) -> float:
        """Seconds to store ``files`` through its REST API, 4 at a time."""

        def one(path: Path) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            try:
                connection.request("POST", "/instances", body=path.read_bytes())
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise OSError(f"Orthanc refused {path.name}: {response.status}")
            finally:
                connection.close()

        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, files))
        return time.perf_counter() - started

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        time.sleep(1.5)  # it keeps its SQLite lock a moment after SIGTERM


def get(port: int, path: str, accept: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("GET", path, headers={"Accept": accept} if accept else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def timed_get(port: int, path: str, accept: str | None = None) -> float:
    started = time.perf_counter()
    status, body = get(port, path, accept)
    if status != 200:
        raise OSError(f"GET {path}: {status} {body[:200]!r}")
    return time.perf_counter() - started


def timed_gets(port: int, path: str, count: int) -> float:
    """The median seconds of ``count`` GETs of ``path`` over one kept-alive connection (as a
    browser asks)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise OSError(f"GET {path}: {response.status} {body[:200]!r}")
            times.append(time.perf_counter() - started)
    finally:
        connection.close()
    return statistics.median(times)


def frames_time(port: int, paths: list[str]) -> float:
    """Seconds for ``FRAME_READERS`` clients (keep-alive) to get each of ``paths`` (a frame each)."""

    def reader(part: list[str]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            for path in part:
                connection.request("GET", path, headers={"Accept": JPEG})
                response = connection.getresponse()
                body = response.read()
                if response.status != 200 or len(body) < 100:
                    raise OSError(f"GET {path}: {response.status}")
        finally:
            connection.close()

    parts = [paths[k::FRAME_READERS] for k in range(FRAME_READERS)]
    started = time.perf_counter()
    with ThreadPoolExecutor(FRAME_READERS) as pool:
        list(pool.map(reader, parts))
    return time.perf_counter() - started


class ViewerSite:
    """OHIF's files, its configuration, and a proxy of ``/dicomweb`` to a DICOMweb server's root
    (the same origin for both servers: Orthanc sends no CORS headers)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.target: tuple[int, str] = (0, "")
        site = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/app-config.js":
                    return self._send(200, "application/javascript", _ohif_config("/dicomweb"))
                if path.startswith("/dicomweb"):
                    port, root = site.target
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                    headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept",)}
                    connection.request("GET", root + self.path[len("/dicomweb") :], headers=headers)
                    response = connection.getresponse()
                    body = response.read()
                    connection.close()
                    return self._send(response.status, response.getheader("Content-Type", ""), body)
                if not (Path(self.directory) / path.lstrip("/")).is_file():
                    self.path = "/index.html"
                return super().do_GET()

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the browser closed with requests in flight (the image was shown): expected

        self.server = Server(
            ("127.0.0.1", self.port), functools.partial(Handler, directory=str(VIEWERS / "ohif" / "dist"))
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first_image(self, port: int, root: str, patient: str, study: str, listed: str, shots: Path) -> float:
        """Seconds from OHIF's viewer page asked for to its first image shown."""
        self.target = (port, root)
        arguments = [str(VIEWERS / "node_modules"), f"http://127.0.0.1:{self.port}", patient, study, str(shots), listed]
        run = subprocess.run(
            ["node", str(REPO / "tests" / "viewers" / "ohif.mjs"), *arguments],
            capture_output=True,
            text=True,
            timeout=600,
        )
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        if seen["errors"] or seen["image"] is None:
            raise RuntimeError(f"OHIF showed no image: {seen['errors']}")
        return float(seen["timings"]["viewer"])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ohif_config(root: str) -> bytes:
    import sys

    sys.path.insert(0, str(REPO))
    from tests.test_dicomweb_ohif import _app_config

    return _app_config(root)


def bench_dicomweb(runs: int, latency: float, bandwidth: float | None, workdir: Path) -> list[tuple[str, ...]]:
    if not (shutil.which("Orthanc") and ORTHANC_PLUGIN.exists()):
        return [("n-q. DICOMweb", "skipped", "needs Debian's orthanc and orthanc-dicomweb", "", "")]
    info = prepare_data(workdir / "data")
    ct, slide = info["ct"], info["slide"]
    ct_files = sorted((info["data"] / "idc-open-data" / CT_SERIES).iterdir())
    slide_files = sorted((info["data"] / "idc-open-data" / slide.crdc_series_uuid).iterdir())
    level0 = max(slide_files, key=lambda p: p.stat().st_size)
    level0_uid = pydicom.dcmread(level0, stop_before_pixels=True).SOPInstanceUID
    frame_count = int(pydicom.dcmread(level0, stop_before_pixels=True).NumberOfFrames)
    scratch = Path(tempfile.mkdtemp(prefix="bench-dicomweb-", dir=workdir))
    catalogs = scratch / "catalogs"
    rows: list[tuple[str, ...]] = []
    series_path = f"/studies/{ct.study_uid}/series/{ct.series_uid}"
    instance = f"/studies/{slide.study_uid}/series/{slide.series_uid}/instances/{level0_uid}"
    frame_paths = [f"{instance}/frames/{1 + (k * 7919) % frame_count}" for k in range(FRAMES)]
    query = f"/studies?PatientID={ct.patient_id}&limit=101&offset=0&fuzzymatching=false&includefield={OHIF_INCLUDE}"
    options = ("--dicomweb", f"--collection={ct.collection_id}", f"--collection={slide.collection_id}")
    with (
        s3_server(info["data"], log_path=workdir / "rclone-serve.log") as server,
        bench_proxy(server.url, latency, bandwidth) as proxy,
    ):
        warm_server_etags(server.url, [CT_SERIES, slide.crdc_series_uuid])
        Served(proxy.url, scratch / "warm-up", catalogs, *options).stop()  # the catalog, once, untimed
        if os.environ.get("BENCH_DICOMWEB_ROWS") != "q":  # rows n-p too (BENCH_DICOMWEB_ROWS=q: row q alone)
            orthanc = Orthanc(scratch / "orthanc")
            orthanc.upload(ct_files + slide_files)
            measured: dict[str, list[float]] = {}

            def measure(tool: str, port: int, root: str) -> None:
                """The server's first /metadata, then warm ones, the search, the frames (idcfs's once
                through first: warm; Orthanc's files are on its disk, in the page cache since their
                upload, and it takes ~0.5 s a frame of this slide: measured in the first run only)."""
                metadata = f"{root}{series_path}/metadata"
                proxy.log.clear()
                measured.setdefault(f"{tool} metadata cold", []).append(timed_get(port, metadata))
                measured.setdefault(f"{tool} metadata requests", []).append(len(proxy.log.requests))
                measured.setdefault(f"{tool} metadata warm", []).append(timed_gets(port, metadata, WARM_READS))
                if tool == "orthanc" and f"{tool} frames" in measured:
                    measured.setdefault(f"{tool} qido", []).append(timed_gets(port, root + query, QUERIES))
                    return  # ~0.5 s a frame of this slide: once is enough
                if tool == "idcfs":
                    frames_time(port, [root + path for path in frame_paths])  # warm: once through first
                frames = frames_time(port, [root + path for path in frame_paths])
                measured.setdefault(f"{tool} frames", []).append(frames)
                # Last: a server that has run a while (idcfs builds its identifier indexes in the
                # background from its start; until then a search scans the column).
                measured.setdefault(f"{tool} qido", []).append(timed_gets(port, root + query, QUERIES))

            try:
                for _ in range(runs):
                    shutil.rmtree(scratch / "cold", ignore_errors=True)
                    served = Served(proxy.url, scratch / "cold", catalogs, *options)
                    try:
                        measure("idcfs", served.port, "/dicomweb")
                    finally:
                        served.stop()
                    orthanc.stop()
                    orthanc = Orthanc(scratch / "orthanc")  # restarted: its first answer from its disk
                    measure("orthanc", orthanc.port, "/dicom-web")
            finally:
                orthanc.stop()
            m = {key: statistics.median(values) for key, values in measured.items()}
            rows += [
                ("n. QIDO study search (OHIF's)", "idcfs serve --dicomweb", f"{m['idcfs qido'] * 1e3:.1f} ms",
                 f"{m['idcfs qido'] / m['orthanc qido']:.2f}x Orthanc", "0 requests: the catalog"),
                ("", "Orthanc 1.10 + DICOMweb 1.7", f"{m['orthanc qido'] * 1e3:.1f} ms", "", "2 studies held"),
                ("o. /metadata, 200-instance CT", "idcfs cold", f"{m['idcfs metadata cold']:.2f} s",
                 f"{m['idcfs metadata cold'] / m['orthanc metadata cold']:.2f}x Orthanc's first",
                 f"{m['idcfs metadata requests']:.0f} requests"),
                ("", "idcfs warm", f"{m['idcfs metadata warm'] * 1e3:.1f} ms",
                 f"{m['idcfs metadata warm'] / m['orthanc metadata warm']:.2f}x Orthanc", ""),
                ("", "Orthanc first after a restart / warm", f"{m['orthanc metadata cold'] * 1e3:.1f} ms",
                 f"{m['orthanc metadata warm'] * 1e3:.1f} ms", ""),
                (f"p. {FRAMES} slide frames, {FRAME_READERS} clients, warm", "idcfs", f"{m['idcfs frames']:.2f} s",
                 f"{m['idcfs frames'] / m['orthanc frames']:.2f}x Orthanc", "JPEG as stored"),
                ("", "Orthanc", f"{m['orthanc frames']:.2f} s", "", ""),
            ]  # fmt: skip
        rows += _first_image(runs, proxy, scratch, catalogs, options, ct)
    shutil.rmtree(scratch, ignore_errors=True)
    return rows


def _first_image(runs, proxy, scratch, catalogs, options, ct) -> list[tuple[str, ...]]:  # noqa: ANN001
    if not (shutil.which("chromium") and shutil.which("node") and (VIEWERS / "ohif" / "dist").exists()):
        return [("q. OHIF first image", "skipped", "needs chromium, node and scripts/install_viewers.sh", "", "")]
    import duckdb
    import idc_index_data

    ((listed,),) = duckdb.sql(
        f"SELECT any_value(StudyDescription) FROM read_parquet('{idc_index_data.IDC_INDEX_PARQUET_FILEPATH}') "
        f"WHERE StudyInstanceUID = '{ct.study_uid}'"
    ).fetchall()
    study = (ct.patient_id, ct.study_uid, listed)
    site = ViewerSite()
    idcfs_times, warm_times, peer = [], [], []
    try:
        for _ in range(runs):
            shutil.rmtree(scratch / "first", ignore_errors=True)
            served = Served(proxy.url, scratch / "first", catalogs, *options)
            try:
                idcfs_times.append(site.first_image(served.port, "/dicomweb", *study, scratch / "shot"))
                # Again on the same server (the headers kept, the files cached): OHIF's own time
                # here, the floor of any cold way there.
                warm_times.append(site.first_image(served.port, "/dicomweb", *study, scratch / "shot"))
            finally:
                served.stop()
            target = scratch / "download"
            shutil.rmtree(target, ignore_errors=True)
            started = time.perf_counter()
            s5cmd_copy(proxy.url, f"s3://idc-open-data/{CT_SERIES}/*", target)
            download = time.perf_counter() - started
            shutil.rmtree(scratch / "orthanc-empty", ignore_errors=True)
            orthanc = Orthanc(scratch / "orthanc-empty")
            try:
                stored = orthanc.upload(sorted(target.iterdir()))
                # Orthanc's list shows the files' own attributes: the generated files have no
                # StudyDescription, and their PatientName is the patient's ID.
                peer_study = (ct.patient_id, ct.study_uid, ct.patient_id)
                shown = site.first_image(orthanc.port, "/dicom-web", *peer_study, scratch / "shot")
            finally:
                orthanc.stop()
            peer.append((download, stored, shown))
    finally:
        site.stop()
    ours, warm = statistics.median(idcfs_times), statistics.median(warm_times)
    theirs = statistics.median(sum(parts) for parts in peer)
    parts = [statistics.median(p[k] for p in peer) for k in range(3)]
    return [
        ("q. OHIF first image, cold 200-file CT", "idcfs serve --dicomweb", f"{ours:.2f} s", f"{ours / theirs:.2f}x",
         ""),
        ("", "idcfs again, warm (OHIF's own time: the floor)", f"{warm:.2f} s", f"{warm / theirs:.2f}x",
         "headers kept, files cached"),
        ("", "s5cmd cp + upload to Orthanc + OHIF", f"{theirs:.2f} s", "",
         f"download {parts[0]:.2f} + upload {parts[1]:.2f} + OHIF {parts[2]:.2f} s"),
    ]  # fmt: skip


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    for row in bench_dicomweb(int(sys.argv[1]) if len(sys.argv) > 1 else 1, 0.020, None, REPO / ".bench"):
        print(" | ".join(row))
