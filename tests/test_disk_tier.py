"""The disk tier on real files: blocks survive a new tier on the folder (a remount), damage of
any kind reads as a miss, the cap holds with the least recently used going first, a crash's and
an older idcfs's leftovers go, and ``cache clear`` works under a live tier. On a real small disk
(a tmpfs, needs root): it fits itself to the space there is, and after a real ENOSPC (someone
else filled the disk) it pauses, sweeps what the failed write left, and works again once there
is room."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time

import pytest

from idcfs.blocks import buffers, disk_tier
from idcfs.blocks.buffers import new_buffer
from idcfs.blocks.disk_tier import DiskTier
from idcfs.blocks.tiers import STREAM

MIB = 1 << 20


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(path) -> None:
    with contextlib.suppress(OSError), open(path, "wb") as handle:
        while True:
            handle.write(b"\0" * MIB)


def test_a_cache_capped_above_its_disk_evicts_instead_of_failing(small_disk):
    tier = DiskTier(small_disk / "blocks", 64 * MIB, retry_interval=0.2)
    for k in range(20):
        tier.put(f"k{k}", os.urandom(MIB))
        assert tier.flush(10)
    assert tier.write_failures == 0
    assert tier.get("k19", MIB) is not None  # the newest is there; the oldest made room
    assert tier.get("k0", MIB) is None
    tier.close()


def test_after_a_full_disk_the_tier_works_again_once_there_is_room(small_disk):
    tier = DiskTier(small_disk / "blocks", 64 * MIB, retry_interval=0.2)
    tier.put("before", os.urandom(MIB))
    assert tier.flush(10)
    _fill(small_disk / "filler")  # another program takes every byte left
    for k in range(3):
        tier.put(f"during{k}", os.urandom(MIB))
        tier.flush(10)
    assert tier.write_failures >= 1 and tier.paused
    tier.get("before", MIB)  # reads go on (the block itself may have made room for the filler)
    (small_disk / "filler").unlink()
    deadline = time.monotonic() + 10  # bounds a broken run only
    while tier.paused and time.monotonic() < deadline:
        time.sleep(0.05)
    data = os.urandom(MIB)
    tier.put("after", data)
    assert tier.flush(10)
    assert bytes(tier.get("after", MIB)) == data
    assert shutil.disk_usage(small_disk).free > MIB  # what the failed write left was swept
    tier.close()


def _tier(folder, size=64 * MIB):
    return DiskTier(folder / "blocks", size, retry_interval=0.2)


def test_blocks_outlive_the_tier_that_wrote_them(tmp_path):
    tier = _tier(tmp_path)
    blocks = {f"bucket/series/{k}.dcm@1048576#{k % 3}": os.urandom(1000 + k * 70_000) for k in range(8)}
    for key, data in blocks.items():
        tier.put(key, data)
        assert tier.get(key, len(data)) == data  # queued, not yet written: served all the same
    assert tier.flush(10)
    tier.close()
    again = _tier(tmp_path)
    for key, data in blocks.items():
        assert bytes(again.get(key, len(data))) == data
    assert again.get("bucket/series/absent.dcm@1048576#0", 10) is None
    assert again.bytes_used == sum(len(d) for d in blocks.values())
    assert disk_tier.summary(tmp_path / "blocks") == (8, again.bytes_used, 64 * MIB)
    again.close()


def test_a_part_of_a_block_reads_only_the_chunks_it_touches_and_checks_them(tmp_path):
    """A 64 KiB tile of a block evicted from memory is a small read, checked all the same: a
    damaged chunk elsewhere in the block does not spoil it, one it touches is a miss."""
    tier = _tier(tmp_path)
    chunk = disk_tier.CHUNK
    data = os.urandom(5 * chunk + 12_345)  # a short last chunk, as at the end of an object
    tier.put("k", data)
    assert bytes(tier.read("k", len(data), 10, 20)) == data[10:20]  # queued, not yet written
    assert tier.flush(10)
    for start, stop in [(0, 1), (0, chunk), (chunk - 1, chunk + 1), (3 * chunk + 7, 4 * chunk), (100, len(data))]:
        assert bytes(tier.read("k", len(data), start, stop)) == data[start:stop], (start, stop)
    assert bytes(tier.read("k", len(data), len(data) - 5, len(data))) == data[-5:]
    path = disk_tier.block_path(tmp_path / "blocks", "k")
    raw = bytearray(path.read_bytes())
    raw[4 * chunk + 3] ^= 1  # the fifth chunk
    path.write_bytes(raw)
    assert bytes(tier.read("k", len(data), 0, 2 * chunk)) == data[: 2 * chunk]  # intact chunks
    assert tier.read("k", len(data), 3 * chunk, 4 * chunk + 4) is None  # touches the damage
    with pytest.raises(ValueError):
        tier.read("k", len(data), 5, len(data) + 1)
    tier.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "empty", "trailer", "checksum"])
@pytest.mark.parametrize("reading", ["block", "part"])
def test_a_damaged_block_file_is_a_miss_and_goes(tmp_path, damage, reading):
    tier = _tier(tmp_path)
    data = os.urandom(300_000)
    tier.put("k", data)
    assert tier.flush(10)
    path = disk_tier.block_path(tmp_path / "blocks", "k")
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[1234] ^= 1
    elif damage == "truncate":
        raw = raw[:-100]
    elif damage == "extend":
        raw += b"x"
    elif damage == "empty":
        raw = bytearray()
    elif damage == "checksum":
        raw[len(data)] ^= 1  # the first chunk's CRC
    else:
        raw[-1] ^= 1  # the magic
    path.write_bytes(raw)
    assert (tier.get("k", len(data)) if reading == "block" else tier.read("k", len(data), 1000, 2000)) is None
    deadline = time.monotonic() + 10  # bounds a broken run only
    while (path.exists() or tier.bytes_used) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not path.exists() and tier.bytes_used == 0
    tier.put("k", data)  # fetched again, and kept again
    assert tier.flush(10)
    assert bytes(tier.get("k", len(data))) == data
    assert tier.get("k", len(data) + 1) is None  # a length that does not match is no block
    tier.close()


def test_the_cap_holds_and_the_least_recently_read_go_first(tmp_path):
    tier = _tier(tmp_path, size=10 * MIB)
    for k in range(8):
        tier.put(f"k{k}", os.urandom(MIB))
    assert tier.flush(10)
    assert tier.get("k0", MIB) is not None  # read again: now the most recent
    for k in range(8, 14):
        tier.put(f"k{k}", os.urandom(MIB))
        assert tier.flush(10)
    assert tier.bytes_used <= 10 * MIB
    assert tier.get("k0", MIB) is not None and tier.get("k13", MIB) is not None
    assert tier.get("k1", MIB) is None
    stored = sum(p.stat().st_size for p in (tmp_path / "blocks" / "v1").rglob("*") if p.is_file())
    assert stored <= 10 * MIB + 10 * 16  # the blocks and their trailers, nothing else left behind
    tier.close()


def test_what_a_crash_and_an_older_idcfs_left_is_cleaned_up(tmp_path):
    folder = tmp_path / "blocks"
    tier = _tier(tmp_path)
    tier.put("written", b"w" * 5000)
    assert tier.flush(10)
    tier.close()
    # A crash between the index and the file: a row without its file.
    db = sqlite3.connect(folder / "index.sqlite")
    with db:
        db.execute("INSERT INTO blocks VALUES (?, 'lost', 4096, 0)", (disk_tier.block_name("lost"),))
    db.close()
    # A crash in the middle of a write: a temporary file, old.
    name = disk_tier.block_name("torn")
    temporary = disk_tier.block_path(folder, "torn").parent / f"{name}.999999.tmp"
    temporary.parent.mkdir(parents=True, exist_ok=True)
    temporary.write_bytes(b"half")
    os.utime(temporary, (time.time() - 3600, time.time() - 3600))
    # idcfs 0.4's diskcache folder.
    (folder / "cache.db").write_bytes(b"SQLite format 3\0")
    (folder / "3f" / "a1").mkdir(parents=True)
    (folder / "3f" / "a1" / "old.val").write_bytes(b"x" * 1000)

    tier = _tier(tmp_path, size=8192)
    assert tier.get("lost", 4096) is None
    deadline = time.monotonic() + 10  # bounds a broken run only
    while (temporary.exists() or (folder / "3f").exists()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not temporary.exists() and not (folder / "cache.db").exists() and not (folder / "3f").exists()
    tier.put("new", b"n" * 6000)  # over the cap with the lost row: the oldest rows go first
    assert tier.flush(10)
    assert bytes(tier.get("new", 6000)) == b"n" * 6000
    assert disk_tier.summary(folder)[:2] == (1, 6000)
    tier.close()


def test_cache_clear_under_a_live_tier(tmp_path):
    tier = _tier(tmp_path)
    for k in range(5):
        tier.put(f"k{k}", os.urandom(100_000))
    assert tier.flush(10)
    assert disk_tier.clear(tmp_path / "blocks") == 5
    assert tier.get("k0", 100_000) is None
    tier.put("k0", b"a" * 100_000)
    assert tier.flush(10)
    assert bytes(tier.get("k0", 100_000)) == b"a" * 100_000
    tier.close()
    assert disk_tier.summary(tmp_path / "blocks")[:2] == (1, 100_000)


def test_readers_and_the_writer_side_by_side(tmp_path):
    import threading

    tier = _tier(tmp_path, size=6 * MIB)
    blocks = {f"k{k}": os.urandom(256 * 1024) for k in range(64)}
    wrong = []

    def reader():
        for _ in range(20):
            for key, data in blocks.items():
                got = tier.get(key, len(data))
                if got is not None and bytes(got) != data:
                    wrong.append(key)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for key, data in blocks.items():
        tier.put(key, data)
    for thread in threads:
        thread.join(60)
    assert tier.flush(10)
    assert not wrong and tier.bytes_used <= 6 * MIB
    tier.close()


def _stream_blocks_round_trip(folder) -> bool:
    """Whether the writer kept O_DIRECT on; every block reads back whole through a new tier."""
    tier = DiskTier(folder / "blocks", 64 * MIB, retry_interval=0.2)
    blocks = {}
    for length in (4096, 3 * 4096, MIB, MIB + 1000, 1000, 70_001):
        block = new_buffer(length)
        block[:] = os.urandom(length)
        blocks[f"stream#{length}"] = bytes(block)
        tier.put(f"stream#{length}", block, STREAM)
    assert tier.flush(10) and tier.write_failures == 0
    direct = tier._direct
    tier.close()
    again = DiskTier(folder / "blocks", 64 * MIB)
    for key, data in blocks.items():
        assert bytes(again.get(key, len(data))) == data, key
    again.close()
    return direct


def test_a_streams_blocks_go_past_the_page_cache_and_read_back_whole(tmp_path):
    direct = _stream_blocks_round_trip(tmp_path)
    fs_type = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout
    if fs_type.startswith("ext"):  # the usual cache disk takes O_DIRECT (others may not)
        assert direct


@pytest.fixture
def ramfs(tmp_path):
    folder = tmp_path / "ramfs"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "ramfs", "ramfs", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a ramfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_file_system_without_o_direct_takes_a_streams_blocks_all_the_same(ramfs):
    assert not _stream_blocks_round_trip(ramfs)  # ramfs refuses O_DIRECT with EINVAL


def test_a_small_disk_takes_a_streams_blocks(small_disk):
    _stream_blocks_round_trip(small_disk)  # tmpfs takes O_DIRECT since Linux 6.6; either way


def test_an_earlier_formats_blocks_go_and_the_tier_starts_empty(tmp_path):
    """Blocks of an earlier format (v1: one CRC for the whole block) are not read as this one's:
    their rows go at once and their files in the sweep."""
    folder = tmp_path / "blocks"
    tier = _tier(tmp_path)
    tier.put("k", b"x" * 5000)
    assert tier.flush(10)
    tier.close()
    current = disk_tier.block_path(folder, "k")
    old = folder / "v1" / current.parent.name / current.name
    old.parent.mkdir(parents=True)
    current.rename(old)  # as an earlier idcfs left it: its row, its file in its folder
    shutil.rmtree(folder / current.parent.parent.name)
    tier = _tier(tmp_path)
    assert tier.bytes_used == 0 and tier.get("k", 5000) is None
    deadline = time.monotonic() + 10  # bounds a broken run only
    while (folder / "v1").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not (folder / "v1").exists()
    tier.put("k", b"y" * 5000)
    assert tier.flush(10)
    assert bytes(tier.get("k", 5000)) == b"y" * 5000 and disk_tier.summary(folder)[:2] == (1, 5000)
    tier.close()


def test_cache_clear_removes_an_earlier_versions_blocks_too(tmp_path):
    folder = tmp_path / "blocks"
    (folder / "3f" / "a1").mkdir(parents=True)
    (folder / "3f" / "a1" / "old.val").write_bytes(b"x" * 1000)
    (folder / "cache.db").write_bytes(b"SQLite format 3\0")
    assert disk_tier.clear(folder) == 0
    assert not (folder / "3f").exists() and not (folder / "cache.db").exists()


# -- Windows: what the tier does there, in process (no Windows machine runs the suite) ----------


@pytest.fixture
def portable_calls(monkeypatch):
    """The tier with the calls it uses where ``os`` has no ``preadv``/``pwritev`` (Windows)."""
    monkeypatch.setattr(disk_tier, "_read_into", disk_tier._read_into_portable)
    monkeypatch.setattr(disk_tier, "_write_at", disk_tier._write_at_portable)


@pytest.mark.parametrize("into", ["bytearray", "mapping"])
def test_the_portable_positional_calls_read_and_write_at_an_offset(tmp_path, into):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    try:
        assert disk_tier._write_at_portable(fd, [memoryview(b"abc"), b"defg"], 5) == 7
        buffer = bytearray(4) if into == "bytearray" else buffers._anonymous(4)
        assert disk_tier._read_into_portable(fd, buffer, 6) == 4 and bytes(buffer) == b"bcde"
        tail = bytearray(10)
        assert disk_tier._read_into_portable(fd, tail, 9) == 3 and bytes(tail[:3]) == b"efg"  # the end
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\0" * 5 + b"abcdefg"


def test_blocks_and_parts_round_trip_through_the_portable_calls(tmp_path, portable_calls):
    data = [os.urandom(MIB), os.urandom(3 * disk_tier.CHUNK + 17)]
    tier = DiskTier(tmp_path / "blocks", 64 * MIB)
    for k, block in enumerate(data):
        tier.put(f"k{k}", block)
    assert tier.flush(10)
    tier.close()
    tier = DiskTier(tmp_path / "blocks", 64 * MIB)  # from the files, not the queue
    try:
        for k, block in enumerate(data):
            assert bytes(tier.get(f"k{k}", len(block))) == block
            assert bytes(tier.read(f"k{k}", len(block), 70_000, 140_001)) == block[70_000:140_001]
    finally:
        tier.close()


def test_a_block_file_someone_reads_cannot_be_replaced_on_windows_and_the_write_goes_on(tmp_path, monkeypatch):
    """Windows refuses to replace a file another process has open (PermissionError): the block
    is there already with the same bytes, so the new copy is dropped and the writer goes on."""
    tier = DiskTier(tmp_path / "blocks", 64 * MIB)
    tier.put("k", b"x" * 1000)
    assert tier.flush(10)
    replace = os.replace

    def refused_if_there(source, target):
        if os.path.exists(target):
            raise PermissionError(13, "The process cannot access the file because it is being used")
        replace(source, target)

    monkeypatch.setattr(os, "replace", refused_if_there)
    tier.put("k", b"x" * 1000)  # written again (another process fetched it too) while someone reads it
    tier.put("other", b"y" * 1000)
    assert tier.flush(10)
    assert tier.write_failures == 0 and not tier.paused
    assert bytes(tier.get("k", 1000)) == b"x" * 1000 and bytes(tier.get("other", 1000)) == b"y" * 1000
    assert not list((tmp_path / "blocks").rglob("*.tmp")), "the dropped copy is removed"
    tier.close()


def _refused(unlink, path):
    def unlink_unless_open(target, *args, **kwargs):
        if os.fspath(target) == os.fspath(path):
            raise PermissionError(13, "The process cannot access the file because it is being used")
        return unlink(target, *args, **kwargs)

    return unlink_unless_open


def test_a_block_file_that_will_not_go_keeps_its_row_in_eviction_and_clear(tmp_path, monkeypatch):
    """Windows refuses to remove a file that is open elsewhere: eviction and ``cache clear``
    leave it and its row (no file nobody knows of), and take it at a later turn."""
    tier = DiskTier(tmp_path / "blocks", 64 * MIB)
    for k in range(4):
        tier.put(f"k{k}", os.urandom(1000))
    assert tier.flush(10)
    tier.close()
    held = disk_tier.block_path(tmp_path / "blocks", "k0")
    with monkeypatch.context() as patch:
        patch.setattr(os, "unlink", _refused(os.unlink, held))
        disk_tier.clear(tmp_path / "blocks")
        assert held.exists()
        assert disk_tier.summary(tmp_path / "blocks")[0] >= 1  # its row stays
    disk_tier.clear(tmp_path / "blocks")  # once nobody holds it
    assert not held.exists() and disk_tier.summary(tmp_path / "blocks")[0] == 0


def test_a_file_made_elsewhere_is_sealed_adopted_counted_and_read_in_parts_checked(tmp_path):
    """How a volume's pack enters the tier: sealed (the CRC trailer appended), adopted as one
    block (indexed, counted, moved into place), then read in parts through one open descriptor,
    every chunk checked; a damaged chunk is None, never other bytes."""
    tier = DiskTier(tmp_path / "blocks", 1 << 30)
    try:
        payload = os.urandom(3 * disk_tier.CHUNK + 123)
        made = tmp_path / "made"
        made.write_bytes(payload)
        assert disk_tier.seal(made) == len(payload)
        assert tier.adopt("volume/x", made, timeout=10)
        assert not made.exists()
        assert tier.stored_length("volume/x") == len(payload)
        assert tier.bytes_used == len(payload)
        opened = tier.open_block("volume/x", len(payload))
        assert opened is not None
        try:
            for start, stop in ((0, 10), (disk_tier.CHUNK - 5, disk_tier.CHUNK + 5), (len(payload) - 7, len(payload))):
                assert bytes(opened.read(start, stop)) == payload[start:stop]
            assert tier.open_block("volume/x", len(payload) - 1) is None  # not that block
            path = disk_tier.block_path(tmp_path / "blocks", "volume/x")
            with open(path, "r+b") as damaged:
                damaged.seek(disk_tier.CHUNK + 1)
                damaged.write(b"\xff" if payload[disk_tier.CHUNK + 1] != 0xFF else b"\x00")
            assert opened.read(0, 10) is not None  # an intact chunk
            assert opened.read(disk_tier.CHUNK, disk_tier.CHUNK + 2) is None
        finally:
            opened.close()
            opened.close()  # idempotent
        assert opened.read(0, 1) is None  # closed
    finally:
        tier.close()


def test_processes_opening_a_new_folder_at_once_all_get_the_tier(tmp_path):
    """Two faces started together on a new cache folder: switching its index to WAL met
    "database is locked" at once (no busy wait), and one of them ran without a disk cache."""
    import sys

    go = tmp_path / "go"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from idcfs.blocks.disk_tier import DiskTier\n"
        "while not Path(sys.argv[1]).exists(): time.sleep(0.001)\n"
        "DiskTier(Path(sys.argv[2]), 1 << 20).close()\n"
        "print('ok')\n"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", script, str(go), str(tmp_path / "blocks")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]  # fmt: skip
    time.sleep(1.0)  # all of them waiting
    go.touch()
    outcomes = [run.communicate(timeout=60) for run in runs]
    assert [out.strip() for out, _ in outcomes] == ["ok"] * 6, [err for _, err in outcomes]
