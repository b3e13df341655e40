"""IDC's largest series, 91,980 objects, listed and read on the real S3 and GCS test servers, and
its ``/metadata`` over DICOMweb (as tiny valid instances) streamed in bounded memory.

Writing 2 x 91,980 files and loading them into fake-gcs-server takes minutes, so this is its own
target (``make test-big``); the suite runs the small version (a 1,505-object, two-page series:
tests/test_store.py and tests/test_trust.py).
"""

from __future__ import annotations

import http.client
import os
from pathlib import Path

import pytest

from idcfs.catalog.layout import escape_name
from idcfs.remote.retry import RetryPolicy
from idcfs.remote.store import open_store
from tests.testbed.bulk import LARGEST_SERIES, tiny_dicom_series, tiny_series
from tests.testbed.proxy import CountingProxy
from tests.testbed.servers import gcs_server, s3_server

from .conftest import TESTDATA, mount_idcfs, requires_fuse, run_idcfs
from .test_webdav import start_serve, stop_serve

pytestmark = [pytest.mark.big, requires_fuse]

BIG = TESTDATA / "big"
COUNT = 91_980


@pytest.fixture(scope="module")
def largest():
    return tiny_series(BIG, LARGEST_SERIES, COUNT)


@pytest.fixture(scope="module", params=["aws", "gcs"])
def big_server(request, largest):
    logs = TESTDATA / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    make, folder = (s3_server, BIG / "s3") if request.param == "aws" else (gcs_server, BIG / "gcs")
    server = make(folder, log_path=logs / f"big-{request.param}.log").start(timeout=900)  # fake-gcs loads it all
    try:
        with CountingProxy(server.url) as proxy:
            yield request.param, proxy
    finally:
        server.stop()


def test_the_largest_series_lists_whole_in_pages(big_server, largest):
    source, proxy = big_server
    # rclone serve s3 walks the whole folder for every page (~1 s a page): a long deadline.
    store = open_store(source, proxy.url, RetryPolicy(deadline=900, attempt_timeout=60))
    proxy.log.clear()
    proxy.fault = _every_tenth_page_fails_once()
    try:
        objects = store.list_series(largest.aws_bucket, largest.crdc_series_uuid)
    finally:
        proxy.fault = None
    assert [o.name for o in objects] == largest.names
    pages = -(-COUNT // 1000)
    assert proxy.log.count() == pages + len(range(1, pages, 10))  # failed pages once more, no restart


def _every_tenth_page_fails_once():
    """Pages 2, 12, 22, ... are reset the first time they are asked for."""
    seen: dict[str, int] = {}

    def rule(method, path):
        if "continuation-token=" not in path and "pageToken=" not in path:
            return None
        if path in seen:
            return None  # the retry of a page goes through
        seen[path] = len(seen) + 1
        return "reset" if seen[path] % 10 == 1 else None

    return rule


def test_the_largest_series_through_a_mount(big_server, largest, tmp_path):
    source, proxy = big_server
    mount = mount_idcfs(tmp_path, proxy.url, "--source", source, "--prefetch", "file", "--retry-deadline", "900")
    try:
        folder = mount.path / largest.series.path
        names = os.listdir(folder)
        assert len(names) == COUNT
        for name in largest.names[:: COUNT // 50]:
            assert (folder / escape_name(name)).read_bytes() == largest.payload(name)
    finally:
        run_idcfs("umount", str(mount.path))


def test_the_largest_series_metadata_streams_as_read_in_bounded_memory(tmp_path):
    """Its first instances' metadata go out after a handful of header reads, not after 91,980;
    the server's memory grows by the series' summaries, not by its metadata; the next answer
    comes from the record kept, with no request to the store."""
    largest = tiny_dicom_series(BIG / "dicom", LARGEST_SERIES, COUNT)
    series = largest.series
    logs = TESTDATA / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = s3_server(BIG / "dicom" / "s3", log_path=logs / "big-dicom.log").start(timeout=900)
    try:
        with CountingProxy(server.url) as proxy:
            options = ("--dicomweb", f"--collection={series.collection_id}", "--retry-deadline", "900")
            share = start_serve(tmp_path, proxy.url, *options)
            try:
                path = f"/dicomweb/studies/{series.study_uid}/series/{series.series_uid}/metadata"
                before = _rss_kib(share.process.pid)
                connection = http.client.HTTPConnection("127.0.0.1", share.port, timeout=1800)
                connection.request("GET", path)
                response = connection.getresponse()
                assert response.status == 200
                chunk = response.read1(1 << 20)
                read_at_first = proxy.log.count("GET", ".dcm")
                seen, length, tail, most = 0, 0, b"", before
                while chunk:
                    joined = tail + chunk
                    seen += joined.count(_SOP_TAG)
                    tail = joined[-(len(_SOP_TAG) - 1) :]
                    length += len(chunk)
                    most = max(most, _rss_kib(share.process.pid))
                    chunk = response.read1(1 << 20)
                connection.close()
                print(
                    f"first piece after {read_at_first} header reads; {length:,} bytes; RSS {before:,} -> {most:,} KiB"
                )
                assert read_at_first <= 1000  # not after the last of 91,980
                assert seen == COUNT
                assert most - before < 300 << 10  # the summaries (under 1 KB an instance), not the 112 MB sent
                proxy.log.clear()
                status, _, again = share.request("GET", path)
                assert status == 200 and len(again) == length and again.count(_SOP_TAG) == COUNT
                assert proxy.log.count() == 0  # from the record
            finally:
                stop_serve(share)
    finally:
        server.stop()


#: SOPInstanceUID's tag in DICOM JSON: once an instance.
_SOP_TAG = b'"00080018"'


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
