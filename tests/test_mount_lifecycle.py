"""Mounting, unmounting, signals, bad mount points and failing servers, with the real CLI."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from idcfs.service.mounting import mounted_fuse_points

from .conftest import requires_fuse, run_idcfs, source_file, start_idcfs, wait_until

pytestmark = [pytest.mark.integration, requires_fuse]


def test_umount_removes_the_mount_and_ends_the_daemon(mount_factory, s3_proxy, generated):
    mount = mount_factory(s3_proxy.url)
    pid = mount.daemon_pid()
    assert pid is not None
    result = run_idcfs("umount", str(mount.path))
    assert result.returncode == 0, result.stderr
    assert str(mount.path) not in mounted_fuse_points()
    assert os.listdir(mount.path) == []
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(mount_factory, s3_proxy, sig):
    mount = mount_factory(s3_proxy.url)
    pid = mount.daemon_pid()
    assert pid is not None
    os.kill(pid, sig)
    assert wait_until(lambda: str(mount.path) not in mounted_fuse_points())
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists())
    assert "unmounted" in mount.log()


def test_mount_refuses_bad_mountpoints(tmp_path, s3_proxy, mount_factory):
    missing = run_idcfs("mount", str(tmp_path / "missing"), "--endpoint-url", s3_proxy.url)
    assert missing.returncode != 0 and "does not exist" in missing.stderr

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    not_empty = run_idcfs("mount", str(busy), "--endpoint-url", s3_proxy.url)
    assert not_empty.returncode != 0 and "not empty" in not_empty.stderr

    a_file = tmp_path / "file"
    a_file.write_text("x")
    not_dir = run_idcfs("mount", str(a_file), "--endpoint-url", s3_proxy.url)
    assert not_dir.returncode != 0 and "not a directory" in not_dir.stderr

    mount = mount_factory(s3_proxy.url)
    twice = run_idcfs("mount", str(mount.path), "--endpoint-url", s3_proxy.url)
    assert twice.returncode != 0 and "already a mount point" in twice.stderr
    for result in (missing, not_empty, not_dir, twice):
        assert "Traceback" not in result.stderr


def test_bad_layout_is_a_clear_error_before_mounting(tmp_path, s3_proxy):
    result, mountpoint, _ = start_idcfs(tmp_path, s3_proxy.url, "--layout", "%collection_id/%NoSuchColumn")
    assert result.returncode != 0
    assert "%NoSuchColumn" in result.stderr and "Traceback" not in result.stderr
    assert str(mountpoint) not in mounted_fuse_points()


def test_umount_of_something_not_mounted_is_a_clear_error(tmp_path):
    result = run_idcfs("umount", str(tmp_path))
    assert result.returncode != 0 and "not a FUSE mount point" in result.stderr


def test_stale_mount_after_daemon_death_is_reported_and_cleaned(mount_factory, s3_proxy):
    mount = mount_factory(s3_proxy.url)
    pid = mount.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists())
    again = run_idcfs("mount", str(mount.path), "--endpoint-url", s3_proxy.url)
    assert again.returncode != 0 and "stale" in again.stderr
    stats = run_idcfs("stats", str(mount.path))
    assert stats.returncode == 1
    gone = f"idcfs: error: the daemon of {mount.path} is gone; clean up with: idcfs umount {mount.path}"
    assert stats.stderr.strip() == gone
    assert run_idcfs("umount", str(mount.path)).returncode == 0
    assert str(mount.path) not in mounted_fuse_points()


def test_server_errors_give_eio_after_retries_then_recover(mount_factory, s3_proxy, generated):
    mount = mount_factory(s3_proxy.url, "--retry-deadline", "2", "--request-timeout", "1")
    series = generated[0]
    folder = mount.series_dir(series)
    names = os.listdir(folder)  # listing works; now break object GETs
    s3_proxy.fault = lambda method, path: 503 if method == "GET" and "list-type" not in path else None
    try:
        s3_proxy.log.clear()
        with pytest.raises(OSError) as error:
            (folder / names[0]).read_bytes()
        assert error.value.errno == errno.EIO
        assert s3_proxy.log.count("GET") > 1  # it retried before giving up
    finally:
        s3_proxy.fault = None
    # A failure is not cached: the same file reads correctly once the server recovers.
    assert (folder / names[0]).read_bytes() == source_file(series, names[0]).read_bytes()
    assert "Traceback" not in mount.log()
    # One log line per failed request, naming the object, the error and the retries; the
    # statistics count the same failures and the retries before them.
    stats = json.loads((mount.path / ".idcfs" / "stats").read_bytes())
    errors = [line for line in mount.log().splitlines() if " ERROR " in line]
    assert len(errors) == stats["errors"] >= 1
    for line in errors:
        assert f"s3://{series.aws_bucket}/{series.crdc_series_uuid}/" in line and "HTTP 503" in line
        assert re.search(r"failed after [1-9]\d* retries", line), line
    assert stats["retries"] >= stats["errors"]


def test_listing_errors_give_eio_and_are_not_cached(mount_factory, s3_proxy, generated):
    mount = mount_factory(s3_proxy.url, "--retry-deadline", "1", "--request-timeout", "1")
    series = generated[1]
    s3_proxy.fault = lambda method, path: 500 if "list-type" in path else None
    try:
        with pytest.raises(OSError) as error:
            os.listdir(mount.series_dir(series))
        assert error.value.errno == errno.EIO
    finally:
        s3_proxy.fault = None
    assert sorted(os.listdir(mount.series_dir(series))) == [f.name for f in series.files]


def test_a_hung_server_gives_eio_not_a_hang(mount_factory, s3_proxy, generated):
    mount = mount_factory(s3_proxy.url, "--retry-deadline", "2", "--request-timeout", "1")
    series = generated[3]
    folder = mount.series_dir(series)
    name = os.listdir(folder)[0]
    release = threading.Event()
    s3_proxy.fault = lambda method, path: (release.wait(30) and None) if method == "GET" else None
    try:
        result = subprocess.run(["cat", str(folder / name)], capture_output=True, timeout=60, check=False)
    finally:
        release.set()
        s3_proxy.fault = None
    assert result.returncode != 0 and b"Input/output error" in result.stderr
    assert result.stdout == b""  # never partial or wrong bytes


def test_options_come_from_environment_variables(tmp_path, s3_proxy, generated):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = dict(os.environ, IDCFS_ENDPOINT_URL=s3_proxy.url, IDCFS_SOURCE="aws", IDCFS_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        [str(Path(os.sys.executable).with_name("idcfs")), "mount", str(mountpoint)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    try:
        series = generated[0]
        name = series.files[0].name
        assert (mountpoint / series.path / name).read_bytes() == source_file(series, name).read_bytes()
        assert (tmp_path / "cache" / "idcfs.log").exists()
    finally:
        assert run_idcfs("umount", str(mountpoint)).returncode == 0


def test_a_busy_mount_says_so_once_and_unmounts_when_let_go(mount_factory, s3_proxy):
    mount = mount_factory(s3_proxy.url)
    handle = os.open(mount.path, os.O_RDONLY)  # a shell sitting in the mount, as far as the kernel knows
    try:
        busy = run_idcfs("umount", str(mount.path))
        assert busy.returncode == 1
        message = busy.stderr.strip()
        assert message.count("unmount") == 1 and "busy" in message and "--lazy" in message, message
    finally:
        os.close(handle)
    assert run_idcfs("umount", str(mount.path)).returncode == 0
