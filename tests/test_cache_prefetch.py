"""The persistent cache, readahead and series prefetch, on real mounts: counted at the server
(requests and bytes through the proxy), never timed."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from idcfs.blocks import disk_tier
from idcfs.service.mounting import mounted_fuse_points
from tests.testbed.proxy import CountingProxy

from .conftest import TEST_BLOCK_SIZE, requires_fuse, run_idcfs, source_file, wait_until

pytestmark = [pytest.mark.integration, requires_fuse]

BLOCK = 64 * 1024
assert TEST_BLOCK_SIZE == "64K"


def object_gets(proxy, series, name) -> int:
    return proxy.log.count("GET", f"{series.crdc_series_uuid}/{name}")


def unmount(mount) -> None:
    result = run_idcfs("umount", str(mount.path))
    assert result.returncode == 0, result.stderr


def read_series(mount, series) -> None:
    for f in series.files:
        assert (mount.series_dir(series) / f.name).read_bytes() == source_file(series, f.name).read_bytes()


def test_reread_after_remount_makes_no_request(mount_factory, s3_proxy, generated, tmp_path):
    cache = tmp_path / "cache"
    series = generated[0]
    first = mount_factory(s3_proxy.url, "--cache-dir", str(cache))
    read_series(first, series)
    unmount(first)  # waits for the daemon to finish writing its cache
    second = mount_factory(s3_proxy.url, "--cache-dir", str(cache))
    s3_proxy.log.clear()
    read_series(second, series)
    assert os.listdir(second.series_dir(series))
    assert s3_proxy.log.count() == 0  # no GET and no LIST: blocks and listing came from disk


def test_disk_cache_stays_under_its_cap(mount_factory, s3_proxy, generated, tmp_path):
    cache = tmp_path / "cache"
    cap = 512 * 1024
    mount = mount_factory(s3_proxy.url, "--cache-dir", str(cache), "--cache-size", str(cap))
    total = 0
    for series in generated:
        read_series(mount, series)
        total += series.total_bytes
    assert total > 4 * cap
    unmount(mount)
    count, stored, _ = disk_tier.summary(cache / "blocks")
    assert 0 < stored <= cap + BLOCK  # at most a block over, while the next one is written
    assert count > 0


def test_concurrent_readers_of_a_block_share_one_get(mount_factory, s3_proxy, generated):
    mount = mount_factory(s3_proxy.url, "--prefetch", "off")
    series = generated[2]
    f = series.files[0]
    os.listdir(mount.series_dir(series))
    s3_proxy.log.clear()
    barrier = threading.Barrier(8)
    results = []

    def read() -> None:
        barrier.wait()
        results.append((mount.series_dir(series) / f.name).read_bytes())

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r == source_file(series, f.name).read_bytes() for r in results)
    assert object_gets(s3_proxy, series, f.name) == math.ceil(f.size / BLOCK)  # each block once


def test_a_header_read_of_a_large_object_fetches_about_a_block(mount_factory, s3_proxy, large_object):
    mount = mount_factory(s3_proxy.url)
    path = mount.series_dir(large_object.series) / large_object.name
    assert path.stat().st_size == large_object.size
    s3_proxy.log.clear()
    fd = os.open(path, os.O_RDONLY)
    try:
        header = os.pread(fd, 1024, 0)
    finally:
        os.close(fd)
    assert header == source_file(large_object.series, large_object.name).read_bytes()[:1024]
    # The kernel reads ahead a few hundred kB; idcfs adds at most a small window; no stream,
    # and no series prefetch for slide microscopy.
    assert s3_proxy.log.body_bytes <= 1 << 20
    assert s3_proxy.log.body_bytes < large_object.size / 8


@pytest.mark.parametrize("reader", ["64 KiB through Python's buffered open()", "1 KiB pread"])
def test_a_header_read_with_the_default_blocks_fetches_at_most_a_mebibyte(
    mount_factory, s3_upstream, large_object, reader
):
    """What Python, pydicom and OpenSlide do first: at most one default block fetched, counted
    at a proxy of its own once background work has settled (the kernel's readahead included)."""
    expected = source_file(large_object.series, large_object.name).read_bytes()
    with CountingProxy(s3_upstream.url) as proxy:
        mount = mount_factory(proxy.url, "--block-size", "1M")
        path = mount.series_dir(large_object.series) / large_object.name
        assert path.stat().st_size == large_object.size  # the listing, not counted
        proxy.log.clear()
        if reader.startswith("64"):
            with open(path, "rb") as handle:
                assert handle.read(65536) == expected[:65536]
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                assert os.pread(fd, 1024, 0) == expected[:1024]
            finally:
                os.close(fd)
        assert proxy.settle()
        assert 0 < proxy.log.body_bytes <= 1 << 20
        unmount(mount)


def test_a_header_read_through_the_mount_is_answered_once_the_kernels_first_read_is_in(
    mount_factory, s3_upstream, large_object
):
    """Python's 64 KiB header read reaches the daemon as one small kernel read (st_blksize), and
    is answered as soon as that much of its block has arrived, not once the 1 MiB block has: on
    a slow line the difference is the bytes not waited for. The object comes at 256 KiB/s."""
    expected = source_file(large_object.series, large_object.name).read_bytes()
    pace = 256 << 10
    with CountingProxy(s3_upstream.url) as proxy:
        mount = mount_factory(proxy.url, "--block-size", "1M", "--prefetch", "off")
        path = mount.series_dir(large_object.series) / large_object.name
        assert path.stat().st_blksize == 64 << 10
        proxy.log.clear()  # the listing aside
        proxy.fault = lambda method, url: f"slow:{pace}" if method == "GET" and large_object.name in url else None
        try:
            with open(path, "rb") as handle:
                assert handle.read(65536) == expected[:65536]
            # The kernel's first read is 128 KiB (twice Python's): answered after ~0.5 s of a
            # block that takes 4 s; a 128 KiB st_blksize made it 256 KiB.
            assert proxy.log.body_bytes < 256 << 10
        finally:
            proxy.fault = None
        assert proxy.settle(timeout=30)
        assert proxy.log.count("GET", large_object.name) == 1  # the rest of the block, not again
        assert proxy.log.body_bytes == 1 << 20
        unmount(mount)


def _pread_at_random(path, expected, count):
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in range(0, len(expected) - BLOCK, len(expected) // 10)[:count]:
            assert os.pread(fd, 4096, offset + 12345) == expected[offset + 12345 : offset + 12345 + 4096]
    finally:
        os.close(fd)


def test_a_few_reads_at_random_fetch_what_they_read(mount_factory, s3_proxy, large_object):
    """A header and a few frames (fewer jumps than make a file 'read at random') stream nothing."""
    mount = mount_factory(s3_proxy.url)
    path = mount.series_dir(large_object.series) / large_object.name
    expected = source_file(large_object.series, large_object.name).read_bytes()
    os.stat(path)
    s3_proxy.log.clear()
    _pread_at_random(path, expected, 4)  # a first read, then three jumps
    assert s3_proxy.log.body_bytes <= 4 * 6 * BLOCK  # each read: its blocks and the kernel's readahead


def test_an_object_read_at_random_is_fetched_whole_once(mount_factory, s3_proxy, large_object):
    """Tile reads all over a slide file: after a few jumps the object is fetched whole in the
    background (parallel runs of blocks), about once, and later reads need no request."""
    mount = mount_factory(s3_proxy.url)
    path = mount.series_dir(large_object.series) / large_object.name
    expected = source_file(large_object.series, large_object.name).read_bytes()
    os.stat(path)
    s3_proxy.log.clear()
    _pread_at_random(path, expected, 10)

    def in_memory() -> int:
        return json.loads((mount.path / ".idcfs" / "stats").read_bytes())["cache"]["memory"]["bytes"]

    assert wait_until(lambda: in_memory() >= large_object.size, 30)  # every block settled
    fetched = s3_proxy.log.body_bytes
    assert fetched <= 1.1 * large_object.size
    with open(path, "rb") as handle:  # a second reader, at random too: all from the cache
        for offset in range(777, large_object.size - 4096, large_object.size // 37):
            handle.seek(offset)
            assert handle.read(4096) == expected[offset : offset + 4096]
    assert s3_proxy.log.body_bytes == fetched


def test_an_object_fetched_whole_is_on_disk_for_the_next_mount(mount_factory, s3_proxy, large_object):
    """Fetched whole without waiting for the disk writer (memory holds it), the object is still
    written to disk behind the fetch: the next mount on the cache reads it with no request."""
    mount = mount_factory(s3_proxy.url)
    path = mount.series_dir(large_object.series) / large_object.name
    expected = source_file(large_object.series, large_object.name).read_bytes()
    os.stat(path)
    _pread_at_random(path, expected, 10)

    def on_disk() -> int:
        return json.loads((mount.path / ".idcfs" / "stats").read_bytes())["cache"]["disk"]["bytes"]

    assert wait_until(lambda: on_disk() >= large_object.size, 30)
    run_idcfs("umount", str(mount.path))
    again = mount_factory(s3_proxy.url, "--cache-dir", str(mount.path.parent / "cache"))
    path = again.series_dir(large_object.series) / large_object.name
    os.stat(path)
    s3_proxy.log.clear()
    with open(path, "rb") as handle:
        for offset in range(333, large_object.size - 4096, large_object.size // 41):
            handle.seek(offset)
            assert handle.read(4096) == expected[offset : offset + 4096]
    assert s3_proxy.log.count("GET", large_object.name) == 0


def test_sequential_read_uses_readahead_and_is_exact(mount_factory, s3_proxy, large_object):
    mount = mount_factory(s3_proxy.url)
    path = mount.series_dir(large_object.series) / large_object.name
    os.stat(path)
    s3_proxy.log.clear()
    data = path.read_bytes()
    assert data == source_file(large_object.series, large_object.name).read_bytes()
    assert s3_proxy.log.body_bytes == large_object.size  # every byte fetched once
    # Readahead coalesces blocks into larger GETs (how many depends on how fast the reader
    # catches up with it, so only "fewer than one a block" is certain).
    assert s3_proxy.log.count("GET") < large_object.size // BLOCK


def test_reading_one_instance_prefetches_its_series(mount_factory, s3_proxy, generated):
    mount = mount_factory(s3_proxy.url)
    series = generated[3]
    names = sorted(os.listdir(mount.series_dir(series)))
    s3_proxy.log.clear()
    (mount.series_dir(series) / names[0]).read_bytes()
    assert wait_until(lambda: s3_proxy.log.body_bytes >= series.total_bytes)
    before = s3_proxy.log.count()
    read_series(mount, series)
    assert s3_proxy.log.count() == before  # the rest came from the prefetch
    assert s3_proxy.log.body_bytes == series.total_bytes  # nothing twice
    assert before <= len(series.files) + 2  # about a GET a file: each object's blocks coalesced


@pytest.mark.parametrize(
    "options",
    [("--prefetch", "off"), ("--prefetch", "file"), ("--prefetch-max-series", "100K")],
    ids=["prefetch off", "readahead only", "series over the limit"],
)
def test_without_series_prefetch_only_the_file_read_is_fetched(mount_factory, s3_proxy, generated, options):
    mount = mount_factory(s3_proxy.url, *options)
    series = generated[0]
    first = mount.series_dir(series) / sorted(os.listdir(mount.series_dir(series)))[0]
    s3_proxy.log.clear()
    first.read_bytes()
    assert s3_proxy.log.body_bytes == first.stat().st_size
    assert s3_proxy.log.count("GET") <= math.ceil(first.stat().st_size / BLOCK)


def test_killed_daemon_then_remount_serves_correct_bytes(mount_factory, s3_proxy, large_object, tmp_path):
    cache = tmp_path / "cache"
    mount = mount_factory(s3_proxy.url, "--cache-dir", str(cache))
    path = mount.series_dir(large_object.series) / large_object.name
    s3_proxy.latency = 0.05  # slow enough that the kill lands mid-read
    try:
        reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: s3_proxy.log.count("GET", large_object.name) >= 8)
        os.kill(mount.daemon_pid(), signal.SIGKILL)
        reader.wait(timeout=60)
    finally:
        s3_proxy.latency = 0.0
    subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], check=False)
    assert str(mount.path) not in mounted_fuse_points()
    again = mount_factory(s3_proxy.url, "--cache-dir", str(cache))
    s3_proxy.log.clear()
    data = (again.series_dir(large_object.series) / large_object.name).read_bytes()
    assert data == source_file(large_object.series, large_object.name).read_bytes()
    assert s3_proxy.log.body_bytes < large_object.size  # part came from the disk cache


def test_prefetch_command_warms_the_cache(mount_factory, s3_proxy, generated, tmp_path):
    cache = tmp_path / "cache"
    series = generated[2]
    mount = mount_factory(s3_proxy.url, "--cache-dir", str(cache), "--prefetch", "off")
    study = mount.series_dir(series).parent
    result = run_idcfs("prefetch", str(study))
    assert result.returncode == 0, result.stderr
    assert "prefetched" in result.stdout and f"{len(series.files)} files" in result.stdout
    assert result.stdout.count("\n") == 1 and "%|" not in result.stderr  # no terminal: one line, no bars
    unmount(mount)
    again = mount_factory(s3_proxy.url, "--cache-dir", str(cache))
    s3_proxy.log.clear()
    read_series(again, series)
    assert s3_proxy.log.count() == 0


def test_prefetch_command_refuses_what_does_not_fit(mount_factory, s3_proxy, generated):
    mount = mount_factory(s3_proxy.url, "--cache-size", "64K")
    result = run_idcfs("prefetch", str(mount.path / generated[0].collection_id))
    assert result.returncode != 0 and "would not fit" in result.stderr
    outside = run_idcfs("prefetch", "/tmp")
    assert outside.returncode != 0 and "not inside an idcfs mount" in outside.stderr


def test_cache_info_and_clear(mount_factory, s3_proxy, generated, tmp_path):
    cache = tmp_path / "cache"
    mount = mount_factory(s3_proxy.url, "--cache-dir", str(cache))
    read_series(mount, generated[1])
    unmount(mount)
    info = run_idcfs("cache", "info", "--cache-dir", str(cache))
    assert info.returncode == 0 and "blocks" in info.stdout and "catalog snapshots" in info.stdout
    assert run_idcfs("cache", "clear", "--cache-dir", str(cache)).returncode == 0
    assert disk_tier.summary(cache / "blocks")[:2] == (0, 0)
    assert not [p for p in (cache / "blocks").rglob("*") if p.is_file() and len(p.name) == 32]


def test_an_unwritable_cache_degrades_to_network_reads(mount_factory, s3_proxy, generated, tmp_path):
    log_file = tmp_path / "elsewhere.log"
    mount = mount_factory(s3_proxy.url, "--cache-dir", "/proc/idcfs-cannot-exist", "--log-file", str(log_file))
    read_series(mount, generated[1])
    text = Path(log_file).read_text()
    assert "WARNING" in text and "Traceback" not in text


def test_evicted_blocks_buffers_serve_later_bodies_and_bytes_stay_right(mount_factory, s3_proxy, generated):
    """A memory tier far smaller than what is read evicts all the time, and the buffers of blocks
    nobody holds are reused for the next bodies: with 4 readers at once, and each file's pages
    dropped from the kernel's cache first, every byte still matches."""
    mount = mount_factory(s3_proxy.url, "--memory-cache-size", "512K", "--cache-size", "0")
    files = [(series, f.name) for series in generated[:4] for f in series.files]
    expected = {(s.crdc_series_uuid, name): source_file(s, name).read_bytes() for s, name in files}
    wrong = []

    def read_all(seed: int) -> None:
        order = files[:]
        random.Random(seed).shuffle(order)
        for series, name in order * 2:
            with open(mount.series_dir(series) / name, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                if handle.read() != expected[(series.crdc_series_uuid, name)]:
                    wrong.append(name)

    threads = [threading.Thread(target=read_all, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stats = json.loads((mount.path / ".idcfs" / "stats").read_text())
    assert not wrong
    assert stats["cache"]["memory"]["buffers_reused"] > 0
    assert stats["cache"]["memory"]["bytes"] <= 512 * 1024
