"""``idcfs serve --dicomweb`` under 16 clients at once, each retrieving frames of its own series
(CT and MR slices, an enhanced multi-frame CT, a slide's JPEG tiles) for a fixed time: every frame
byte for byte the stored one, no error, and the server's memory flat from the first half of the
run to the end."""

from __future__ import annotations

import email.parser
import email.policy
import http.client
import random
import threading
import time
from pathlib import Path

import pydicom
from pydicom.encaps import generate_frames

from tests.conftest import source_file
from tests.test_webdav import start_serve, stop_serve

CLIENTS = 16
SECONDS = 8.0


def _frames(path: Path) -> tuple[str, list[bytes]]:
    """The instance's SOPInstanceUID and its frames as stored (pydicom's own reading)."""
    ds = pydicom.dcmread(path)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return ds.SOPInstanceUID, list(generate_frames(ds.PixelData, number_of_frames=count))
    size = len(ds.PixelData) // count
    return ds.SOPInstanceUID, [ds.PixelData[k * size : (k + 1) * size] for k in range(count)]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_16_clients_retrieving_frames_get_every_byte_right(generated, slide, volume_cases, s3_proxy, tmp_path):
    series = [s for s in [*generated, slide, *volume_cases.values()] if s.modality not in ("SR", "SEG")]
    expected = {}
    for one in series:
        frames = {}
        for file in one.files:
            if "PixelData" in pydicom.dcmread(source_file(one, file.name)):
                sop, cut = _frames(source_file(one, file.name))
                frames[sop] = cut
        if frames:
            expected[one.series_uid] = (one.study_uid, frames)
    assert len(expected) >= 6
    collections = sorted({s.collection_id for s in series})
    share = start_serve(tmp_path, s3_proxy.url, "--dicomweb", *(f"--collection={c}" for c in collections))
    chosen = list(expected)
    counts = {"frames": 0, "wrong": 0, "errors": 0}
    problems: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + SECONDS

    def client(number: int) -> None:
        series_uid = chosen[number % len(chosen)]
        study_uid, frames = expected[series_uid]
        rng = random.Random(number)
        connection = http.client.HTTPConnection("127.0.0.1", share.port, timeout=60)
        try:
            while time.monotonic() < stop:
                sop = rng.choice(list(frames))
                wanted = sorted(rng.sample(range(1, len(frames[sop]) + 1), min(3, len(frames[sop]))))
                path = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop}/frames/"
                try:
                    connection.request("GET", path + ",".join(map(str, wanted)), headers={"Accept": "*/*"})
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as error:
                    with lock:
                        counts["errors"] += 1
                        problems.append(f"{path}: {error!r}")
                    connection.close()
                    continue
                if response.status != 200:
                    with lock:
                        counts["errors"] += 1
                        problems.append(f"{path}: {response.status} {body[:200]!r}")
                    continue
                kind = response.getheader("Content-Type", "")
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"Content-Type: " + kind.encode() + b"\r\n\r\n" + body
                )
                got = [part.get_payload(decode=True) for part in message.iter_parts()]
                right = got == [frames[sop][n - 1] for n in wanted]
                with lock:
                    counts["frames"] += len(wanted)
                    counts["wrong"] += 0 if right else 1
        finally:
            connection.close()

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(SECONDS / 2)
        halfway = _rss_kib(share.process.pid)
        for thread in threads:
            thread.join(SECONDS + 120)
        end = _rss_kib(share.process.pid)
    finally:
        stop_serve(share)
    assert counts["errors"] == 0, problems[:5]
    assert counts["wrong"] == 0
    assert counts["frames"] > CLIENTS * 10
    assert end - halfway < 32 << 10, f"RSS grew from {halfway} to {end} KiB in the second half"
