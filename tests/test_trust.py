"""A mount that stays up for weeks: no reader hangs whatever the network does, nothing sticks once
the cause is gone, offline is a mode, memory is capped, and odd keys, paged listings and a 26k
folder work through the kernel. Real mounts, real servers, faults injected by the proxy."""

from __future__ import annotations

import errno
import json
import os
import random
import sqlite3
import stat
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from idcfs.catalog.layout import escape_name
from idcfs.service.mounting import mounted_fuse_points
from tests.testbed.bulk import AWKWARD_NAMES
from tests.testbed.proxy import CountingProxy
from tests.testbed.servers import free_port

from .conftest import IDCFS, mount_idcfs, requires_fuse, run_idcfs, source_file, wait_until

pytestmark = [requires_fuse, pytest.mark.integration]


def _stats(mount) -> dict:
    return json.loads((mount.path / ".idcfs" / "stats").read_bytes())


def _drop_page_cache() -> None:
    """Make the next read reach the daemon (root only; the tests run as root)."""
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


def _read_all(path: Path) -> bytes | OSError:
    try:
        return path.read_bytes()
    except OSError as error:
        return error


def test_no_reader_hangs_under_heavy_faults_and_the_same_mount_heals(mount_factory, s3_proxy, generated, large_object):
    """Issue 9's hang: 70% of GETs fail (503, reset, stall) with a 2 s deadline. Every reader
    returns (bytes or EIO, never wrong bytes); once the faults stop, every file reads right."""
    mount = mount_factory(s3_proxy.url, "--retry-deadline", "2", "--request-timeout", "1")
    rng = random.Random(9)
    kinds = [503, "reset", "stall:1.5", "truncate"]
    s3_proxy.fault = lambda method, path: (
        rng.choice(kinds) if method == "GET" and "list-type" not in path and rng.random() < 0.7 else None
    )
    files = [(mount.series_dir(s) / f.name, source_file(s, f.name)) for s in generated for f in s.files]
    large = mount.series_dir(large_object.series) / large_object.name
    results: dict[str, object] = {}

    def reader(k: int) -> None:
        for path, source in files[k::4]:
            got = _read_all(path)
            results[str(path)] = got if isinstance(got, OSError) else got == source.read_bytes()
        with open(large, "rb") as handle:  # random reads of the large object, runs of blocks
            for _ in range(8):
                offset = rng.randrange(0, large_object.size - 300_000)
                try:
                    handle.seek(offset)
                    results[f"large@{offset}"] = (
                        handle.read(300_000) == _large_bytes(large_object)[offset : offset + 300_000]
                    )
                except OSError as error:
                    results[f"large@{offset}"] = error

    try:
        _drop_page_cache()
        threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(4)]
        for thread in threads:
            thread.start()
        # Each read is bounded by deadline + request timeout + slack; a hung one never ends.
        for thread in threads:
            thread.join(timeout=240)
        assert not any(t.is_alive() for t in threads), "a reader hung"
    finally:
        s3_proxy.fault = None
    assert all(r is True or (isinstance(r, OSError) and r.errno == errno.EIO) for r in results.values()), results
    assert sum(s3_proxy.faults.values()) > 0
    _drop_page_cache()
    for path, source in files:
        assert path.read_bytes() == source.read_bytes()
    assert large.read_bytes() == _large_bytes(large_object)
    assert _stats(mount)["internal_errors"] == 0


def _large_bytes(large_object, _cache: dict = {}) -> bytes:  # noqa: B006 - a memo
    key = large_object.name
    if key not in _cache:
        _cache[key] = source_file(large_object.series, large_object.name).read_bytes()
    return _cache[key]


def test_offline_is_a_mode_with_a_warning_fast_failures_cached_reads_and_recovery(tmp_path, s3_upstream, generated):
    port = free_port()
    cached, uncached = generated[0], generated[1]
    proxy = CountingProxy(s3_upstream.url, port=port).start()
    mount = mount_idcfs(tmp_path, proxy.url)
    try:
        for f in cached.files:  # into the daemon's cache
            (mount.series_dir(cached) / f.name).read_bytes()
        proxy.stop()  # the network goes away: connections are refused

        _drop_page_cache()
        with pytest.raises(OSError) as failure:
            os.listdir(mount.series_dir(uncached))
        assert failure.value.errno == errno.EIO
        assert _stats(mount)["store"]["state"] == "offline"
        with pytest.raises(OSError) as again:  # failed at once by the breaker, no request
            (mount.series_dir(uncached) / uncached.files[0].name).stat()
        assert again.value.errno == errno.EIO
        for f in cached.files:  # cached series keep reading
            assert (mount.series_dir(cached) / f.name).read_bytes() == source_file(cached, f.name).read_bytes()
        table = run_idcfs("stats", str(mount.path))
        assert "OFFLINE" in table.stdout

        proxy = CountingProxy(s3_upstream.url, port=port).start()  # the outage ends
        assert wait_until(lambda: _stats(mount)["store"]["state"] == "online", 60)
        for f in uncached.files:
            assert (mount.series_dir(uncached) / f.name).read_bytes() == source_file(uncached, f.name).read_bytes()
    finally:
        proxy.stop()
        subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], check=False)


def test_mounting_without_a_network_warns_and_still_mounts(tmp_path, generated):
    endpoint = f"http://127.0.0.1:{free_port()}"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_idcfs(
        "mount", str(mountpoint), "--endpoint-url", endpoint, "--cache-dir", str(tmp_path / "cache"),
        "--log-file", str(tmp_path / "log"),
    )  # fmt: skip
    try:
        assert result.returncode == 0, result.stderr
        assert "cannot be reached" in result.stderr and "offline" in result.stderr
        assert "Traceback" not in result.stderr
        with pytest.raises(OSError) as failure:
            os.listdir(mountpoint / generated[0].path)
        assert failure.value.errno == errno.EIO
        assert json.loads((mountpoint / ".idcfs" / "stats").read_bytes())["store"]["state"] == "offline"
    finally:
        run_idcfs("umount", str(mountpoint))


def test_a_series_that_appears_later_is_seen_by_the_same_mount(mount_factory, s3_proxy, generated):
    """An empty listing is cached nowhere: not in idcfs, not as a negative entry in the kernel."""
    series = generated[-1]
    mount = mount_factory(s3_proxy.url)
    folder, name = mount.series_dir(series), series.files[0].name
    s3_proxy.fault = lambda method, path: "empty" if "list-type" in path and series.crdc_series_uuid in path else None
    try:
        assert os.listdir(folder) == []
        assert not (folder / name).exists()
    finally:
        s3_proxy.fault = None  # the series arrives
    assert sorted(os.listdir(folder)) == sorted(f.name for f in series.files)
    assert (folder / name).read_bytes() == source_file(series, name).read_bytes()


def test_cache_clear_while_mounted_loses_nothing(mount_factory, s3_proxy, generated, tmp_path):
    mount = mount_factory(s3_proxy.url)
    series = generated[2]
    for f in series.files:
        (mount.series_dir(series) / f.name).read_bytes()
    cache_dir = mount.path.parent / "cache"
    result = run_idcfs("cache", "clear", "--cache-dir", str(cache_dir))
    assert result.returncode == 0, result.stderr
    _drop_page_cache()
    for s in generated[1:3]:
        for f in s.files:
            assert (mount.series_dir(s) / f.name).read_bytes() == source_file(s, f.name).read_bytes()


def test_a_damaged_disk_block_is_fetched_again(mount_factory, s3_proxy, generated):
    from idcfs.blocks import disk_tier

    series = generated[3]
    mount = mount_factory(s3_proxy.url, "--prefetch", "off")
    path = mount.series_dir(series) / series.files[0].name
    expected = source_file(series, series.files[0].name).read_bytes()
    path.read_bytes()
    cache_dir = mount.path.parent / "cache"
    run_idcfs("umount", str(mount.path))
    db = sqlite3.connect(cache_dir / "blocks" / "index.sqlite")
    (key,) = db.execute("SELECT key FROM blocks WHERE key LIKE ?", (f"%{series.files[0].name}%",)).fetchone()
    db.close()
    block_file = disk_tier.block_path(cache_dir / "blocks", key)
    damaged = bytearray(block_file.read_bytes())
    damaged[10] ^= 0xFF
    block_file.write_bytes(damaged)
    (mount.path.parent / "again").mkdir()
    again = mount_idcfs(mount.path.parent / "again", s3_proxy.url, "--prefetch", "off", "--cache-dir", str(cache_dir))
    try:
        s3_proxy.log.clear()
        assert (again.series_dir(series) / series.files[0].name).read_bytes() == expected
        assert s3_proxy.log.count("GET", series.files[0].name) >= 1  # the damaged block, again
        assert "damaged" in again.log()
    finally:
        run_idcfs("umount", str(again.path))


@pytest.mark.parametrize("source", ["aws", "gcs"])
def test_a_paged_series_with_awkward_names_reads_through_the_mount(request, many_objects, source):
    proxy = request.getfixturevalue("s3_proxy" if source == "aws" else "gcs_proxy")
    mount = request.getfixturevalue("s3_mount" if source == "aws" else "gcs_mount")
    folder = mount.path / many_objects.series.path
    # Names appear escaped as every name of the mount is (a "%" as "%25", reversibly).
    assert sorted(os.listdir(folder)) == sorted(escape_name(n) for n in many_objects.names)
    for name in [*many_objects.names[:3], *AWKWARD_NAMES]:
        assert (folder / escape_name(name)).read_bytes() == many_objects.payload(name), name
        assert (folder / escape_name(name)).stat().st_size == len(many_objects.payload(name))
    assert proxy.log.count() > 0


def test_readdir_of_the_26k_patient_folder(s3_mount, s3_proxy):
    import duckdb
    import idc_index_data

    patients = duckdb.sql(
        f"SELECT count(DISTINCT PatientID) FROM read_parquet('{idc_index_data.IDC_INDEX_PARQUET_FILEPATH}') "
        "WHERE collection_id = 'nlst'"
    ).fetchall()[0][0]
    s3_proxy.log.clear()
    entries = os.listdir(s3_mount.path / "nlst")
    assert len(entries) == patients > 20_000
    assert all((s3_mount.path / "nlst" / e).is_dir() for e in entries[:50])
    # Above the series level, the index answers: no listing (an earlier test's series prefetch
    # may still be fetching objects on the shared mount; those GETs are not this test's).
    assert s3_proxy.log.count(contains="list-type") == 0


def test_listings_in_memory_stay_under_their_cap(mount_factory, s3_proxy, generated, many_objects):
    mount = mount_factory(s3_proxy.url, "--listing-cache-size", "300K", "--prefetch", "off")
    for s in [*generated, many_objects.series]:
        for entry in os.scandir(mount.path / s.path):
            entry.stat()
    listings = _stats(mount)["cache"]["listings"]
    assert listings["capacity"] == 200 << 10
    assert 0 < listings["bytes"] <= listings["capacity"]  # the 1,505-object listing did not fit
    s3_proxy.log.clear()
    assert len(os.listdir(mount.path / many_objects.series.path)) == len(many_objects.names)
    assert s3_proxy.log.count("GET", "list-type") == 0  # evicted from memory, read from disk


def test_the_cache_folder_is_private_in_the_foreground(tmp_path, s3_proxy):
    mountpoint, cache = tmp_path / "mnt", tmp_path / "cache"
    mountpoint.mkdir()
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    with open(tmp_path / "log", "wb") as log:
        daemon = subprocess.Popen(
            [
                IDCFS,
                "mount",
                str(mountpoint),
                "--foreground",
                "--endpoint-url",
                s3_proxy.url,
                "--cache-dir",
                str(cache),
            ],
            stdout=log,
            stderr=log,
        )
    try:
        assert wait_until(lambda: str(mountpoint) in mounted_fuse_points(), 60)
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    finally:
        run_idcfs("umount", str(mountpoint))
        daemon.wait(30)


def test_reads_waiting_on_the_network_do_not_hold_back_other_readers(mount_factory, s3_proxy, large_object):
    """24 readers of different blocks, every GET held 1 s: the kernel must pass more than its
    default 12 background reads to the daemon, and the daemon answer them with more than
    libfuse's default 10 threads."""
    mount = mount_factory(s3_proxy.url, "--prefetch", "off", "--block-size", "64K")
    path = mount.series_dir(large_object.series) / large_object.name
    assert path.stat().st_size == large_object.size  # the listing first: only reads are held below
    release = threading.Event()

    def hold_reads(method: str, request_path: str) -> None:
        if large_object.name in request_path:
            release.wait(30)

    s3_proxy.fault = hold_reads
    s3_proxy.log.clear()

    def read_block(k: int) -> bytes:
        with open(path, "rb") as handle:
            handle.seek(k * 300_000)
            return handle.read(1000)

    try:
        with ThreadPoolExecutor(24) as pool:
            reads = [pool.submit(read_block, k) for k in range(24)]
            assert wait_until(lambda: s3_proxy.log.in_flight >= 16, 30), s3_proxy.log.in_flight
            release.set()
            results = [r.result(timeout=60) for r in reads]
    finally:
        release.set()
        s3_proxy.fault = None
    source = _large_bytes(large_object)
    assert results == [source[k * 300_000 : k * 300_000 + 1000] for k in range(24)]
