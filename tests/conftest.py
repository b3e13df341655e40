"""Real parts for the integration tests: generated DICOM, a real S3 server (rclone serve s3), a
real GCS emulator (fake-gcs-server), a counting proxy in front of each, and real FUSE mounts made
with the ``idcfs`` command. Everything listens on 127.0.0.1."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from idcfs.service.mounting import daemon_pid, mounted_fuse_points
from tests.testbed.bulk import PAGED_SERIES, TinySeries, tiny_series
from tests.testbed.dicomgen import GeneratedSeries, generate, index_rows, series_from_row
from tests.testbed.proxy import CountingProxy
from tests.testbed.servers import gcs_server, s3_server
from tests.testbed.volumegen import generate_volume_cases
from tests.testbed.wsigen import generate_slide

REPO = Path(__file__).resolve().parent.parent
TESTDATA = REPO / ".testdata"
IDCFS = str(Path(sys.executable).with_name("idcfs"))
#: What makes a Python process Windows-like (tests/windows_like/sitecustomize.py: the calls
#: Windows lacks taken away), for the processes of idcfs a test starts.
PYTHON_AS_ON_WINDOWS = {
    "PYTHON_AS_ON_WINDOWS": "1",
    "PYTHONPATH": os.pathsep.join((str(REPO / "tests" / "windows_like"), str(REPO))),
}
#: Set to 1, every ``idcfs serve`` the WebDAV tests start is Windows-like
#: (tests/test_windows_like.py runs them so).
SERVE_AS_ON_WINDOWS = "TEST_SERVE_AS_ON_WINDOWS"
#: Small blocks make 130 kB test files span several blocks, so block logic is exercised.
TEST_BLOCK_SIZE = "64K"


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


requires_fuse = pytest.mark.skipif(not _fuse_usable(), reason="needs /dev/fuse and fusermount3")


#: A real slide-microscopy series of the index; the tests put one large opaque object in it.
LARGE_SERIES = "02149e90-c1f7-4cd0-91bc-925380b717b7"
LARGE_NAME = "00000000-0000-4000-8000-00000000000b.dcm"
LARGE_SIZE = 8 << 20


@dataclass
class LargeObject:
    series: GeneratedSeries
    name: str
    size: int


@pytest.fixture(scope="session", autouse=True)
def shared_catalogs(tmp_path_factory) -> Iterator[Path]:
    """One catalog folder for the whole session: every mount (the environment reaches the
    daemons) and every in-process tree of the same selection loads the one snapshot built first,
    where each mount used to build its own ~400 MB copy of the whole release."""
    folder = tmp_path_factory.mktemp("catalogs")
    before = os.environ.get("IDCFS_CATALOG_DIR")
    os.environ["IDCFS_CATALOG_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("IDCFS_CATALOG_DIR", None)
    else:
        os.environ["IDCFS_CATALOG_DIR"] = before
    shutil.rmtree(folder, ignore_errors=True)  # ~700 MB; the next run builds its own (a mapped file stays valid)


@pytest.fixture(scope="session")
def generated(large_object, many_objects, slide, volume_cases) -> list[GeneratedSeries]:
    return generate(TESTDATA / "data", max_instances=6, image_size=256)


@pytest.fixture(scope="session")
def many_objects() -> TinySeries:
    """A real 1,503-instance series as 1,500 tiny objects and five awkward names: two listing
    pages on S3 and GCS (written before the servers start: they load their folders then)."""
    return tiny_series(TESTDATA / "data", PAGED_SERIES, 1500, awkward=True)


@pytest.fixture(scope="session")
def slide() -> GeneratedSeries:
    """A small DICOM whole-slide image (3 levels, JPEG tiles) at a real SM series' paths
    (written before the servers start: they load their folders at start)."""
    return generate_slide(TESTDATA / "data")


@pytest.fixture(scope="session")
def volume_cases() -> dict[str, GeneratedSeries]:
    """The hard cases of ``--volumes`` (tests/testbed/volumegen.py: gantry tilt, two orientations,
    two echoes, an Enhanced CT, a SEG over a CT of its study, an unconvertible CT), each a small
    series at a real series' paths (written before the servers start: they load their folders
    at start)."""
    return generate_volume_cases(TESTDATA / "data")


@pytest.fixture(scope="session")
def large_object() -> LargeObject:
    """8 MiB of opaque bytes as the one object of a real SM series (written before the servers
    start: they load their folders at start)."""
    series = series_from_row(index_rows([LARGE_SERIES])[0])
    for cloud, bucket in (("s3", series.aws_bucket), ("gcs", series.gcs_bucket)):
        path = TESTDATA / "data" / cloud / bucket / LARGE_SERIES / LARGE_NAME
        if not path.exists() or path.stat().st_size != LARGE_SIZE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(random.Random(LARGE_SIZE).randbytes(LARGE_SIZE))
    return LargeObject(series, LARGE_NAME, LARGE_SIZE)


def _server_log(name: str) -> Path:
    logs = TESTDATA / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / name


@pytest.fixture(scope="session")
def s3_upstream(generated):
    with s3_server(TESTDATA / "data" / "s3", log_path=_server_log("rclone.log")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_upstream(generated):
    with gcs_server(TESTDATA / "data" / "gcs", log_path=_server_log("fake-gcs.log")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_proxy(s3_upstream) -> Iterator[CountingProxy]:
    with CountingProxy(s3_upstream.url) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def gcs_proxy(gcs_upstream) -> Iterator[CountingProxy]:
    with CountingProxy(gcs_upstream.url) as proxy:
        yield proxy


@dataclass
class Mount:
    """A live ``idcfs mount``; ``path`` is the mount point."""

    path: Path
    log_file: Path

    def series_dir(self, series: GeneratedSeries) -> Path:
        return self.path / series.path

    def daemon_pid(self) -> int | None:
        return daemon_pid(self.path)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def run_idcfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IDCFS, *args], capture_output=True, text=True, timeout=timeout, check=False)


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll for a state change (not a timing assertion: the timeout only bounds a broken run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def settled(proxy: CountingProxy, quiet_for: float = 0.5, timeout: float = 30.0) -> bool:
    """Background work (readahead, prefetch) has landed at ``proxy``: see ``CountingProxy.settle``."""
    return proxy.settle(quiet_for, timeout)


def start_idcfs(base: Path, endpoint: str, *options: str) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """``idcfs mount`` on ``base/mnt`` with the test defaults (cache and log in ``base``, small
    blocks); later options win over the defaults."""
    mountpoint = base / "mnt"
    mountpoint.mkdir()
    log_file = base / "idcfs.log"
    result = run_idcfs(
        "mount", str(mountpoint), "--endpoint-url", endpoint, "--cache-dir", str(base / "cache"),
        "--log-file", str(log_file), "--block-size", TEST_BLOCK_SIZE, *options,
    )  # fmt: skip
    return result, mountpoint, log_file


def mount_idcfs(base: Path, endpoint: str, *options: str) -> Mount:
    result, mountpoint, log_file = start_idcfs(base, endpoint, *options)
    log_text = log_file.read_text() if log_file.exists() else ""
    assert result.returncode == 0, f"mount failed: {result.stderr}\n{log_text}"
    return Mount(mountpoint, log_file)


@pytest.fixture
def mount_factory(tmp_path_factory) -> Iterator:
    """Mount idcfs with the given options; every mount made is unmounted at teardown."""
    made: list[Mount] = []

    def make(endpoint: str, *options: str) -> Mount:
        mount = mount_idcfs(tmp_path_factory.mktemp("mount"), endpoint, *options)
        made.append(mount)
        return mount

    yield make
    for mount in made:
        if str(mount.path) in mounted_fuse_points():
            subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], check=False)
        pid = mount.daemon_pid()
        if pid:
            wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10)


@pytest.fixture(scope="module")
def s3_mount(s3_proxy, tmp_path_factory) -> Iterator[Mount]:
    """One S3 mount shared by a module's read-only tests."""
    yield from _shared_mount(s3_proxy.url, tmp_path_factory, "--source", "aws")


@pytest.fixture(scope="module")
def gcs_mount(gcs_proxy, tmp_path_factory) -> Iterator[Mount]:
    yield from _shared_mount(gcs_proxy.url, tmp_path_factory, "--source", "gcs")


def _shared_mount(endpoint: str, tmp_path_factory, *options: str) -> Iterator[Mount]:
    mount = mount_idcfs(tmp_path_factory.mktemp("shared"), endpoint, *options)
    yield mount
    subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], check=False)


def source_file(series: GeneratedSeries, name: str) -> Path:
    return TESTDATA / "data" / "s3" / series.aws_bucket / series.crdc_series_uuid / name
