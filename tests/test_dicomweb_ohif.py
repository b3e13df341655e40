"""OHIF Viewer v3, IDC's radiology viewer, in headless Chromium against ``idcfs serve --dicomweb``:
its built ``dist/`` served from another origin than the share (so the browser's CORS checks run on
every answer), its study list filtered by a patient, a CT series opened in its viewer and a SEG
over its CT, the viewport's pixels checked and screenshots kept (``.testdata/screenshots``).

Needs Debian's chromium, node, and OHIF with playwright-core (``scripts/install_viewers.sh``,
run by ``make test``); skipped, saying which is missing, without them."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TESTDATA
from tests.test_dicomweb import indexed
from tests.test_webdav import start_serve, stop_serve
from tests.testbed.servers import free_port

VIEWERS = TESTDATA / "viewers"
SCRIPT = Path(__file__).parent / "viewers" / "ohif.mjs"
SCREENSHOTS = TESTDATA / "screenshots"


def _node_major() -> int:
    try:
        found = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30).stdout
        return int(found.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


pytestmark = pytest.mark.skipif(
    not (shutil.which("chromium") and _node_major() >= 20 and (VIEWERS / "ohif" / "dist" / "index.html").exists()),
    reason="chromium, node 20 or OHIF missing (apt-get install chromium nodejs; scripts/install_viewers.sh)",
)


def _app_config(root: str) -> bytes:
    """OHIF's configuration: one DICOMweb data source, the share's root."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "idcfs",
        "configuration": {
            "friendlyName": "idcfs",
            "name": "idcfs",
            "wadoUriRoot": root,
            "qidoRoot": root,
            "wadoRoot": root,
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "idcfs",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config)};\n".encode()


class _Viewer(http.server.SimpleHTTPRequestHandler):
    """OHIF's files; its configuration; index.html for the app's own paths (``/viewer?...``)."""

    config = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "application/javascript")
            self.send_header("Content-Length", str(len(self.config)))
            self.end_headers()
            self.wfile.write(self.config)
            return
        if not (Path(self.directory) / path.lstrip("/")).is_file():
            self.path = "/index.html"
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def viewer_origin(request) -> Iterator[tuple[str, type[_Viewer]]]:
    port = free_port()
    handler = type("Viewer", (_Viewer,), {})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(handler, directory=str(VIEWERS / "ohif" / "dist"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}", handler
    finally:
        server.shutdown()
        server.server_close()


def _run_ohif(share, origin, handler, series, shots: str, seg: str | None = None) -> dict:
    """OHIF's steps (tests/viewers/ohif.mjs) against ``share``; what it saw, checked in common."""
    handler.config = _app_config(f"{share.url}/dicomweb")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ((description,),) = indexed(
        f"SELECT any_value(StudyDescription) FROM INDEX WHERE StudyInstanceUID = '{series.study_uid}'"
    )
    arguments = [str(VIEWERS / "node_modules"), origin, series.patient_id, series.study_uid, str(SCREENSHOTS / shots)]
    run = subprocess.run(
        ["node", str(SCRIPT), *arguments, description, *([seg] if seg else [])],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    asked = "\n".join(f"{method} {path} {status}" for method, path, status in seen["requests"])
    assert not seen["errors"], f"{seen['errors']}\n{asked}"
    assert description in seen["list"]  # the study list, filtered by the patient's ID, shows the study
    assert seen["image"] is not None, asked  # the viewport shows the image: lit and bright pixels
    assert all(status < 400 for _, _, status in seen["requests"]), asked
    assert any("/frames/" in path for _, path, _ in seen["requests"]), asked
    assert (SCREENSHOTS / f"{shots}-viewer.png").stat().st_size > 10_000
    return seen


def test_ohif_lists_the_study_and_shows_its_ct(generated, s3_proxy, tmp_path, viewer_origin):
    series = next(s for s in generated if s.modality == "CT" and len(s.files) > 1)
    origin, handler = viewer_origin
    share = start_serve(
        tmp_path, s3_proxy.url, "--dicomweb", "--cors-origin", origin, f"--collection={series.collection_id}"
    )
    try:
        _run_ohif(share, origin, handler, series, "ohif-ct")
    finally:
        stop_serve(share)


def test_ohif_overlays_a_seg_on_its_ct(volume_cases, s3_proxy, tmp_path, viewer_origin):
    """The SEG's thumbnail opened as a user opens it (a double click, then "Yes" to OHIF's
    question): its segments drawn in colour over the grey CT it was made on."""
    seg, image = volume_cases["seg"], volume_cases["seg_image"]
    assert seg.study_uid == image.study_uid
    origin, handler = viewer_origin
    share = start_serve(
        tmp_path, s3_proxy.url, "--dicomweb", "--cors-origin", origin, f"--collection={seg.collection_id}"
    )
    try:
        ((description,),) = indexed(f"SELECT SeriesDescription FROM INDEX WHERE SeriesInstanceUID = '{seg.series_uid}'")
        seen = _run_ohif(share, origin, handler, image, "ohif-seg", seg=description)
    finally:
        stop_serve(share)
    assert seen["seg"] is not None and seen["seg"]["coloured"] > 0
    assert any(seg.series_uid in path and "/metadata" in path for _, path, _ in seen["requests"])
