"""idcfs as a system service: fstab / mount(8), mount.idcfs, sd_notify readiness, SIGTERM and
SIGHUP, live statistics and Prometheus metrics. Real mounts against the local S3 server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from idcfs.service.mounting import mounted_fuse_points

from .conftest import IDCFS, TEST_BLOCK_SIZE, mount_idcfs, run_idcfs, source_file, wait_until

pytestmark = [pytest.mark.integration]

requires_mount = pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("mount") is None
    or shutil.which("mount.fuse3") is None
    and not Path("/sbin/mount.fuse3").exists(),
    reason="needs root, mount(8) and mount.fuse3",
)


def _stats(mountpoint: Path) -> dict:
    return json.loads((mountpoint / ".idcfs" / "stats").read_bytes())


def _daemon_gone(mountpoint: Path) -> bool:
    return str(mountpoint) not in mounted_fuse_points() and not any(
        str(mountpoint).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        for pid in os.listdir("/proc")
        if pid.isdigit() and Path(f"/proc/{pid}/cmdline").exists()
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@requires_mount
def test_fstab_line_mounts_reads_counts_and_unmounts(tmp_path, s3_proxy, generated):
    """An fstab line in the legacy ``program#device`` form (the program by absolute path, as the
    test's idcfs is not in mount's PATH), options from both ``-o`` and a config file."""
    mountpoint, cache = tmp_path / "mnt", tmp_path / "cache"
    mountpoint.mkdir()
    config = tmp_path / "idc.toml"
    config.write_text(f'endpoint_url = "{s3_proxy.url}"\nprefetch = "series"\nblock_size = "1M"\n', encoding="utf-8")
    options = (
        f"ro,_netdev,nofail,x-systemd.automount,nosuid,nodev,source=aws,config={config},cache_dir={cache},"
        f"log_file={tmp_path / 'idcfs.log'},block_size={TEST_BLOCK_SIZE},prefetch=off"
    )
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{IDCFS}#none {mountpoint} fuse {options} 0 0\n", encoding="utf-8")
    result = subprocess.run(["mount", "-T", str(fstab), str(mountpoint)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + (tmp_path / "idcfs.log").read_text()
    try:
        assert mounted_fuse_points().get(str(mountpoint)) == "fuse.idcfs"
        line = next(line for line in Path("/proc/mounts").read_text().splitlines() if str(mountpoint) in line)
        assert "nosuid" in line and "nodev" in line and " ro," in line
        series = generated[0]
        folder = mountpoint / series.path
        before = _stats(mountpoint)
        assert before["open_files"] == 0 and before["prefetch"]["mode"] == "off"  # -o wins over the file
        s3_proxy.log.clear()
        name = series.files[0].name
        data = (folder / name).read_bytes()
        assert data == source_file(series, name).read_bytes()
        after = _stats(mountpoint)
        blocks = -(-len(data) // (64 << 10))
        assert after["requests"]["LIST"] - before["requests"]["LIST"] == 1
        object_gets = s3_proxy.log.count("GET") - s3_proxy.log.count("GET", "list-type")
        assert after["requests"]["GET"] - before["requests"]["GET"] == blocks == object_gets
        assert after["bytes_fetched"] - before["bytes_fetched"] == len(data)
        assert after["cache"]["memory"]["misses"] - before["cache"]["memory"]["misses"] == blocks
        assert after["cache"]["kernel"]["bytes"] - before["cache"]["kernel"]["bytes"] == len(data)
        assert after["get_latency"]["count"] == after["requests"]["GET"] and after["get_latency"]["p50"] > 0
        assert after["errors"] == 0
        # The kernel sends RELEASE after close() has returned: wait for it, not for a time.
        assert wait_until(lambda: _stats(mountpoint)["open_files"] == 0)
        # A second read is the kernel's: nothing reaches idcfs, nothing is fetched.
        assert (folder / name).read_bytes() == data
        again = _stats(mountpoint)
        assert (
            again["requests"] == after["requests"]
            and again["cache"]["kernel"]["reads"] == after["cache"]["kernel"]["reads"]
        )
        served_whole = after["cache"]["kernel"]["files_without_reads"] + 1
        assert wait_until(lambda: _stats(mountpoint)["cache"]["kernel"]["files_without_reads"] == served_whole)
        log_text = (tmp_path / "idcfs.log").read_text()
        assert name not in log_text and len(log_text.splitlines()) < 10  # no line per read or request
        table = run_idcfs("stats", str(mountpoint))
        assert table.returncode == 0 and "GET" in table.stdout and "p50" in table.stdout, table.stderr
        for bad in ("0", "-1"):
            refused = run_idcfs("stats", str(mountpoint), "--watch", bad)
            assert refused.returncode == 2 and "must be positive" in refused.stderr, refused.stderr
        # A pipe closed early (`| head`) ends the watch quietly, without a traceback.
        watch = subprocess.Popen([IDCFS, "stats", str(mountpoint), "--watch", "0.1"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)  # fmt: skip
        assert watch.stdout.readline()
        watch.stdout.close()
        assert watch.wait(30) == 0
        assert b"Traceback" not in watch.stderr.read()
    finally:
        umount = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True, timeout=60)
    assert umount.returncode == 0, umount.stderr
    assert wait_until(lambda: _daemon_gone(mountpoint), 30)


def test_mount_helper_mounts_like_mount_t_idcfs(tmp_path, s3_proxy, generated):
    """What ``mount -t idcfs aws DIR -o ...`` runs once /sbin/mount.idcfs links to the helper."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    helper = str(Path(sys.executable).with_name("mount.idcfs"))
    options = f"endpoint_url={s3_proxy.url},cache_dir={tmp_path / 'cache'},log_file={tmp_path / 'log'},dev,suid"
    command = [helper, "aws", str(mountpoint), "-o", options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    try:
        series = generated[1]
        name = series.files[-1].name
        assert (mountpoint / series.path / name).read_bytes() == source_file(series, name).read_bytes()
        assert json.loads((mountpoint / ".idcfs" / "version").read_bytes())["source"] == "aws"
    finally:
        assert run_idcfs("umount", str(mountpoint)).returncode == 0
    # Bad options stop the helper before anything is mounted, with the key named.
    bad = subprocess.run([helper, "aws", str(mountpoint), "-o", "cache_sise=1G"], capture_output=True, text=True)
    assert bad.returncode != 0 and "cache_sise" in bad.stderr and "cache_size" in bad.stderr
    assert str(mountpoint) not in mounted_fuse_points()


def test_sd_notify_ready_means_mounted_and_sigterm_leaves_no_stale_mount(tmp_path, s3_proxy, generated):
    """``Type=notify``: READY=1 arrives once the mount answers; SIGTERM unmounts and says STOPPING=1."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(120)  # bounds a broken run only
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "CACHE_DIRECTORY": str(tmp_path / "svc")}
        env.pop("IDCFS_CATALOG_DIR", None)  # the session's shared catalogs: not what a service has
        daemon = subprocess.Popen(
            [IDCFS, "mount", "--foreground", str(mountpoint), "--endpoint-url", s3_proxy.url, "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            message = notify.recv(4096).decode()
            assert "READY=1" in message.splitlines() and f"MAINPID={daemon.pid}" in message
            assert os.path.ismount(mountpoint)  # usable the moment READY=1 is sent
            series = generated[2]
            assert sorted(os.listdir(mountpoint / series.path)) == [f.name for f in series.files]
            assert (tmp_path / "svc" / "catalogs").is_dir()  # systemd's CacheDirectory= is the default
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
            assert "STOPPING=1" in notify.recv(4096).decode()
        finally:
            if daemon.poll() is None:
                daemon.kill()
    assert str(mountpoint) not in mounted_fuse_points()
    assert os.listdir(mountpoint) == []
    stderr = daemon.stderr.read() if daemon.stderr else ""
    assert "Traceback" not in stderr and " INFO " not in stderr  # --log-level warning


def test_sighup_reopens_the_log_file_and_keeps_the_mount(mount_factory, s3_proxy):
    mount = mount_factory(s3_proxy.url)
    pid = mount.daemon_pid()
    rotated = mount.log_file.with_suffix(".log.1")
    mount.log_file.rename(rotated)
    os.kill(pid, signal.SIGHUP)
    assert wait_until(lambda: "SIGHUP: reopened" in mount.log(), 10)
    assert os.path.ismount(mount.path) and ".idcfs" in os.listdir(mount.path)
    assert "SIGHUP" not in rotated.read_text()


def test_metrics_port_serves_prometheus_text_on_loopback(mount_factory, s3_proxy, generated):
    port = _free_port()
    mount = mount_factory(s3_proxy.url, "--metrics-port", str(port))
    series = generated[3]
    (mount.series_dir(series) / series.files[0].name).read_bytes()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "# TYPE idcfs_requests_total counter" in text
    gets = next(line for line in text.splitlines() if line.startswith('idcfs_requests_total{kind="GET"}'))
    assert int(gets.split()[-1]) >= 1
    stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10).read())
    assert stats["requests"]["GET"] >= 1
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    local = [f.split()[1] for f in listening if f.split()[3] == "0A"]  # LISTEN sockets
    assert f"0100007F:{port:04X}" in local and f"00000000:{port:04X}" not in local  # 127.0.0.1 only


def test_metrics_port_in_use_is_a_clear_error(tmp_path, s3_proxy):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        result = run_idcfs(
            "mount", str(mountpoint), "--endpoint-url", s3_proxy.url, "--cache-dir", str(tmp_path / "c"),
            "--metrics-port", str(port),
        )  # fmt: skip
    assert result.returncode != 0 and f"127.0.0.1:{port}" in result.stderr
    assert str(mountpoint) not in mounted_fuse_points()


def test_prefetch_statistics_count_useful_bytes(tmp_path, s3_proxy, generated):
    """Series prefetch fetches the rest of a series; reading it then counts as useful."""
    mount = mount_idcfs(tmp_path, s3_proxy.url, "--prefetch", "series")
    try:
        series = generated[0]
        folder = mount.series_dir(series)
        (folder / series.files[0].name).read_bytes()
        rest = sum(f.size for f in series.files[1:])
        assert wait_until(lambda: _stats(mount.path)["prefetch"]["unread_bytes"] >= rest, 30)
        gets = _stats(mount.path)["requests"]["GET"]
        for f in series.files[1:]:
            (folder / f.name).read_bytes()
        stats = _stats(mount.path)
        assert stats["requests"]["GET"] == gets  # every later file came from the prefetch
        assert stats["prefetch"]["useful_bytes"] >= rest and stats["prefetch"]["wasted_bytes"] == 0
    finally:
        run_idcfs("umount", str(mount.path))


def _unit_setting(name: str) -> str:
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "idcfs@.service").read_text(encoding="utf-8")
    return next(line.split("=", 1)[1].strip() for line in unit.splitlines() if line.startswith(name + "="))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_the_units_hardening_still_allows_fuse(tmp_path, s3_proxy, generated):
    """The unit's NoNewPrivileges= and CapabilityBoundingSet=, applied with setpriv (short of
    running systemd here): the daemon mounts, reads, and ExecStop's ``idcfs umount`` works."""
    assert _unit_setting("NoNewPrivileges") == "yes"
    capabilities = _unit_setting("CapabilityBoundingSet").split()
    keep = ",".join("+" + cap.removeprefix("CAP_").lower() for cap in capabilities)
    sandbox = ["setpriv", "--no-new-privs", "--bounding-set", f"-all,{keep}", "--inh-caps", "-all"]
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(120)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "CACHE_DIRECTORY": str(tmp_path / "cache")}
        command = [IDCFS, "mount", "--foreground", str(mountpoint), "--endpoint-url", s3_proxy.url, "--allow-other"]
        daemon = subprocess.Popen(
            [*sandbox, *command],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert "READY=1" in notify.recv(4096).decode()
            status = Path(f"/proc/{daemon.pid}/status").read_text()
            assert re.search(r"^NoNewPrivs:\s+1$", status, re.M) and re.search(r"^CapEff:\s+0+200000$", status, re.M)
            series = generated[0]
            name = series.files[0].name
            assert (mountpoint / series.path / name).read_bytes() == source_file(series, name).read_bytes()
            stop = subprocess.run([*sandbox, IDCFS, "umount", str(mountpoint)], capture_output=True, text=True)
            assert stop.returncode == 0, stop.stderr
            assert daemon.wait(60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
    assert str(mountpoint) not in mounted_fuse_points()
