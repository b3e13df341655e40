"""Block arithmetic of the reader and single-flight of the cache, against an in-memory store.

Pure logic: the store here is a plain object holding bytes, not a patched S3 client; the
integration tests read through real servers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from idcfs.blocks.cache import BlockCache
from idcfs.blocks.policy import PrefetchPolicy
from idcfs.blocks.reader import ObjectRef, Reader, ReadState
from idcfs.blocks.singleflight import SingleFlight
from idcfs.remote.retry import RetryPolicy, StoreError
from tests.conftest import wait_until


class BytesStore:
    def __init__(self, objects: dict[str, bytes], short: bool = False) -> None:
        self.objects = objects
        self.short = short
        self.gate: threading.Event | None = None  # set: GETs wait for it
        self.retry = RetryPolicy()
        self.gets: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()

    def get_range(self, bucket: str, key: str, start: int, end: int, deadline: float | None = None) -> bytes:
        with self.lock:
            self.gets.append((key, start, end))
        if self.gate is not None:
            self.gate.wait(10)
        data = self.objects[key][start:end]
        return data[:-1] if self.short else data

    def get_blocks(
        self, bucket: str, key: str, start: int, sizes: list[int], deadline: float | None = None, arrived=None
    ) -> list[bytes]:
        data = self.get_range(bucket, key, start, start + sum(sizes), deadline)
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        parts = [data[a : a + n] for a, n in zip(offsets, sizes, strict=True)]
        if arrived is not None and len(parts[0]) == sizes[0]:
            arrived(bytearray(parts[0]), sizes[0])
        return parts


DATA = bytes(range(256)) * 1000  # 256,000 bytes


def make(block=1000, cache_bytes=10**6, **store_kwargs):
    store = BytesStore({"k": DATA}, **store_kwargs)
    return store, Reader(store, BlockCache(cache_bytes), block)


def test_reads_match_and_are_clipped_at_eof():
    _, reader = make()
    ref = ObjectRef("b", "k", len(DATA))
    for offset, size in [(0, 1), (999, 2), (500, 5000), (len(DATA) - 1, 10), (len(DATA), 10), (10**9, 1)]:
        assert reader.read(ref, offset, size) == DATA[offset : offset + size]


def test_each_block_is_fetched_once_and_aligned():
    store, reader = make()
    ref = ObjectRef("b", "k", len(DATA))
    reader.read(ref, 1500, 2000)
    reader.read(ref, 1000, 3000)
    assert store.gets == [("k", 1000, 2000), ("k", 2000, 3000), ("k", 3000, 4000)]


def test_small_object_is_one_whole_get():
    store, reader = make(block=1 << 20)
    ref = ObjectRef("b", "k", len(DATA))
    assert reader.read(ref, 100, 10) == DATA[100:110]
    assert store.gets == [("k", 0, len(DATA))]


def test_short_blocks_are_errors_and_not_cached():
    store, reader = make(short=True)
    ref = ObjectRef("b", "k", len(DATA))
    with pytest.raises(StoreError):
        reader.read(ref, 0, 10)
    store.short = False
    assert reader.read(ref, 0, 10) == DATA[:10]


def test_memory_cache_stays_under_its_cap():
    store, reader = make(block=1000, cache_bytes=5000)
    ref = ObjectRef("b", "k", len(DATA))
    reader.read(ref, 0, 50_000)
    assert reader.cache.bytes_used <= 5000


def _wait_for(condition, timeout=10.0):
    """Wait for a state another thread reaches (the timeout only bounds a broken run)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "state not reached"
        time.sleep(0.001)


def test_concurrent_readers_of_one_block_share_one_get():
    gate = threading.Event()
    store, reader = make()
    store.gate = gate
    ref = ObjectRef("b", "k", len(DATA))
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(reader.read, ref, 10, 100) for _ in range(8)]
        _wait_for(lambda: len(store.gets) == 1)  # the one fetch under way (the others wait on its landing)
        _wait_for(lambda: sum(f.running() for f in futures) == 8)
        gate.set()
        assert all(f.result() == DATA[10:110] for f in futures)
    assert len(store.gets) == 1


def test_single_flight_shares_errors():
    flight: SingleFlight[int] = SingleFlight()
    calls = []
    gate = threading.Event()

    def failing():
        calls.append(1)
        gate.wait(10)
        raise StoreError("boom")

    def run():
        try:
            flight.run("k", failing)
        except StoreError:
            return "error"

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(run) for _ in range(4)]
        _wait_for(lambda: flight.joined == 3)
        gate.set()
        assert [f.result() for f in futures] == ["error"] * 4
    assert len(calls) == 1
    assert not flight.pending("k")


def test_a_waiter_gives_up_on_a_fetch_that_never_ends():
    flight: SingleFlight[int] = SingleFlight(wait_timeout=0.2)
    assert flight.claim("k")  # an owner that never settles (the bug this bound guards against)
    with pytest.raises(StoreError, match="gave up waiting"):
        flight.run("k", lambda: 1)


def _blocks(reader, ref, indexes):
    return [(reader.block_key(ref, i), reader._block_length(ref, i)) for i in indexes]


def test_a_failed_stretch_releases_every_claim_and_later_readers_fetch_again():
    """The hang of issue 9: a run with a gap (a block someone else fetches) whose first stretch
    fails must leave no claimed block behind; a reader of a later block then fetches it."""
    store, reader = make()
    ref = ObjectRef("b", "k", len(DATA))
    cache = reader.cache
    blocks = _blocks(reader, ref, range(5))
    assert cache._flight.claim(blocks[2][0])  # the gap: another fetch owns block 2
    calls = []

    def fetch(first, last):
        calls.append((first, last))
        raise StoreError("injected failure of the first stretch")

    with pytest.raises(StoreError):
        cache.fill(blocks, fetch)
    assert calls == [(0, 1)]  # the second stretch (3, 4) was never attempted
    assert [cache.in_flight(key) for key, _ in blocks] == [False, False, True, False, False]
    cache._flight.reject(blocks[2][0], StoreError("the other owner failed too"))
    assert reader.read(ref, 3 * 1000, 10) == DATA[3000:3010]  # fetched by the reader itself
    assert not any(cache.in_flight(key) for key, _ in blocks)


def test_a_waiter_on_an_abandoned_block_fetches_it_itself():
    store, reader = make()
    ref = ObjectRef("b", "k", len(DATA))
    cache = reader.cache
    blocks = _blocks(reader, ref, range(4))
    entered, release = threading.Event(), threading.Event()

    def fetch(first, last):
        if first == 0:
            entered.set()
            release.wait(10)
            raise StoreError("first stretch fails")
        raise AssertionError("not reached")

    assert cache._flight.claim(blocks[1][0])  # a gap, so blocks 2-3 are a second stretch
    with ThreadPoolExecutor(2) as pool:
        filling = pool.submit(cache.fill, blocks, fetch)
        entered.wait(10)
        reading = pool.submit(reader.read, ref, 2 * 1000, 10)  # joins block 2's claim
        _wait_for(lambda: cache._flight.joined == 1)
        release.set()
        with pytest.raises(StoreError):
            filling.result()
        assert reading.result() == DATA[2000:2010]
    cache._flight.reject(blocks[1][0], StoreError("gap owner"))
    assert ("k", 2000, 3000) in store.gets


def test_fill_takes_blocks_from_one_get_per_stretch():
    store, reader = make()
    ref = ObjectRef("b", "k", len(DATA))
    blocks = _blocks(reader, ref, range(3, 7))

    def fetch(first, last):
        return store.get_blocks("b", "k", 3000 + first * 1000, [length for _, length in blocks[first : last + 1]])

    reader.cache.fill(blocks, fetch)
    assert store.gets == [("k", 3000, 7000)]
    assert reader.read(ref, 3500, 3000) == DATA[3500:6500]
    assert len(store.gets) == 1


def _read_at_random(reader, ref, state, reads):
    """``reads`` reads, each a jump (none starts where the last ended, the first not at 0): no
    sequential readahead runs beside them, so every GET is one the test counts."""
    for k in range(reads):
        offset = (50_000 + k * 97_001) % (ref.size - 100)
        assert reader.read(ref, offset, 100, state) == DATA[offset : offset + 100]


def _settled(reader, ref) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(reader.cache.contains(reader.block_key(ref, i)) for i in range(reader.num_blocks(ref))):
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("cache_bytes, fetched_whole", [(10**6, True), (300_000, False)])
def test_an_object_read_at_random_is_fetched_whole_if_the_cache_can_hold_it(cache_bytes, fetched_whole):
    """After ``random_after`` jumps, all of a cacheable object is queued once; an object larger
    than half the cache is never fetched whole (its blocks would evict each other)."""
    from idcfs.blocks.policy import PrefetchPolicy
    from idcfs.blocks.reader import ReadState

    store = BytesStore({"k": DATA})
    policy = PrefetchPolicy(mode="file", random_after=4, coalesce=4)
    reader = Reader(store, BlockCache(cache_bytes), 1000, policy)
    ref = ObjectRef("b", "k", len(DATA))
    state = ReadState()
    _read_at_random(reader, ref, state, 3)  # three jumps: not yet
    assert len(store.gets) == 3
    _read_at_random(reader, ref, state, 4)
    if fetched_whole:
        assert _settled(reader, ref)
        assert sum(end - start for _, start, end in store.gets) <= 1.05 * len(DATA)
        gets = len(store.gets)
        _read_at_random(reader, ref, ReadState(), 10)  # another open file: cached, and not queued again
        assert len(store.gets) == gets
    else:
        assert len(store.gets) <= 4
    reader.close()


class RecordingDisk:
    """A disk tier that keeps nothing and remembers how each block was handed to it."""

    def __init__(self) -> None:
        self.writes: dict[str, object] = {}
        self.capacity = 1 << 30
        self.bytes_used = 0

    def get(self, key, length):
        return None

    def read(self, key, length, start, stop):
        return None

    def put(self, key, block, write=None):
        self.writes[key] = write
        return True

    def close(self) -> None:
        pass


@pytest.mark.parametrize("memory_bytes", [10**6, 300_000])
def test_blocks_go_to_disk_as_their_reason_says_a_whole_object_past_the_page_cache(memory_bytes):
    """A stream's readahead never waits for the disk writer; an object read at random, fetched
    whole, passes the page cache by (a gigabyte through it stalls on write-back) and waits for
    the writer only when memory cannot hold it (later reads expect it on disk); a block a reader
    fetched itself is spare."""
    from idcfs.blocks.tiers import SPARE, STREAM, WHOLE, WHOLE_BEHIND

    disk = RecordingDisk()
    cache = BlockCache(memory_bytes, disk)
    reader = Reader(BytesStore({"k": DATA}), cache, 1000, PrefetchPolicy(mode="file", random_after=4))
    ref = ObjectRef("b", "k", len(DATA))
    _read_at_random(reader, ref, ReadState(), 4)
    assert wait_until(lambda: len(disk.writes) == reader.num_blocks(ref))
    whole = WHOLE_BEHIND if len(DATA) <= memory_bytes // 2 else WHOLE
    assert whole in disk.writes.values() and SPARE in disk.writes.values()
    assert {disk.writes[reader.block_key(ref, i)] for i in range(reader.num_blocks(ref))} <= {whole, SPARE}
    reader.close()

    disk = RecordingDisk()
    reader = Reader(BytesStore({"k": DATA}), BlockCache(10**6, disk), 1000, PrefetchPolicy(mode="file"))
    state = ReadState()
    for offset in range(0, 20_000, 1000):
        reader.read(ref, offset, 1000, state)
    assert wait_until(lambda: STREAM in disk.writes.values(), 10)
    reader.close()


class FullDisk(RecordingDisk):
    """A disk tier whose writer has no room until ``room`` is set: a write that would wait, waits."""

    def __init__(self) -> None:
        super().__init__()
        self.room = threading.Event()

    def put(self, key, block, write=None):
        if not (self.room.is_set() or (write.wait and self.room.wait(10))):
            return False
        self.writes[key] = write
        return True


def test_an_object_memory_holds_is_fetched_whole_without_waiting_for_the_disk_and_written_behind():
    """Behind a disk writer that has no room, an object fetched whole that memory holds still
    arrives at the network's pace (the fetch never waits for the writer), and every block is
    written to disk once the writer has room, without being fetched again."""
    from idcfs.blocks.tiers import WHOLE

    disk = FullDisk()
    store = BytesStore({"k": DATA})
    reader = Reader(store, BlockCache(10**6, disk), 1000, PrefetchPolicy(mode="file", random_after=4))
    ref = ObjectRef("b", "k", len(DATA))
    _read_at_random(reader, ref, ReadState(), 4)
    assert _settled(reader, ref)  # all in memory while the disk took nothing
    fetched = sum(end - start for _, start, end in store.gets)
    disk.room.set()
    # The blocks the jumps fetched themselves are spare: a full disk drops them, as any demand read's.
    jumped = {((50_000 + k * 97_001) % (ref.size - 100) + d) // 1000 for k in range(4) for d in (0, 99)}
    others = [reader.block_key(ref, i) for i in range(reader.num_blocks(ref)) if i not in jumped]
    assert wait_until(lambda: all(key in disk.writes for key in others))
    assert {disk.writes[key] for key in others} == {WHOLE}  # written behind, from memory
    assert sum(end - start for _, start, end in store.gets) == fetched <= 1.05 * len(DATA)
    reader.close()


def test_a_sequential_reader_whose_reads_arrive_out_of_order_is_not_read_at_random():
    """The kernel's requests of one sequential reader reach the daemon a block or two out of
    order (its synchronous read and the readahead beside it, on two threads): still a stream,
    never a file 'read at random' to be fetched whole."""
    _, reader = make()
    reader.prefetch = PrefetchPolicy(mode="file", random_after=4)
    ref = ObjectRef("b", "k", len(DATA))
    state = ReadState()
    order = [0, 2, 1, 4, 3, 5, 7, 6, 9, 8, 10, 12, 11, 13]  # blocks, pairs swapped
    for index in order:
        assert reader.read(ref, index * 1000, 1000, state) == DATA[index * 1000 : (index + 1) * 1000]
    assert state.jumps == 0
    far = reader.read(ref, 100_000, 1000, state)  # a real jump still counts
    assert far == DATA[100_000:101_000] and state.jumps == 1


def test_a_block_a_reader_still_holds_is_never_reused_and_the_others_are():
    from idcfs.blocks.buffers import RECYCLED, new_buffer

    size = 256 * 1024
    cache = BlockCache(max_bytes=2 * size)

    def filled(byte: int):
        def fetch():
            block = new_buffer(size)
            block[:] = bytes([byte]) * size
            return block

        return fetch

    held = cache.read("k0", size, filled(1), None, 0, size)  # a read in progress holds its block
    reused = RECYCLED.reused
    for i in range(1, 12):
        cache.read(f"k{i}", size, filled(i + 1), None, 0, size)  # evicts k0, and then the others
    assert bytes(held) == bytes([1]) * size
    assert RECYCLED.reused > reused  # the blocks nobody held served the later fetches
    for i in range(10, 12):
        assert bytes(cache.read(f"k{i}", size, filled(0), None, 0, size)) == bytes([i + 1]) * size


def test_spare_buffers_go_back_once_a_mount_is_quiet():
    import mmap

    from idcfs.blocks.buffers import Recycled

    pool = Recycled(4 << 20)
    pool.give(mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE))
    pool.give(mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE))
    assert pool.take(1 << 20) is not None
    assert pool.release_idle() == 0  # in use since the last look: kept
    assert pool.release_idle() == 1 << 20  # quiet since: unmapped
    assert pool.take(1 << 20) is None
    for _ in range(5):
        pool.give(mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE))
    assert pool.release_idle() == 4 << 20  # never more than its cap


def test_a_read_of_part_of_a_block_on_disk_reads_that_part_and_evicts_nothing(tmp_path):
    """A tile read of a block the memory tier let go is answered from disk, by its own bytes:
    no GET, and the block does not come back into memory pushing another out (a slide larger
    than the memory tier read at random had every disk hit evict a block and read a whole one)."""
    from idcfs.blocks.disk_tier import DiskTier

    block = 200_000
    store = BytesStore({"k": DATA})
    disk = DiskTier(tmp_path / "blocks", 10**7)
    cache = BlockCache(block, disk)  # the memory tier holds one block
    reader = Reader(store, cache, block)
    ref = ObjectRef("b", "k", len(DATA))
    assert bytes(reader.read(ref, 0, 100)) == DATA[:100]
    assert bytes(reader.read(ref, block, 100)) == DATA[block : block + 100]  # evicts block 0
    assert disk.flush(10)
    gets = len(store.gets)
    assert bytes(reader.read(ref, 5000, 65536)) == DATA[5000 : 5000 + 65536]
    assert bytes(reader.read(ref, block - 10, 20)) == DATA[block - 10 : block + 10]  # both tiers
    assert len(store.gets) == gets
    assert not cache.contains(reader.block_key(ref, 0)) and cache.contains(reader.block_key(ref, 1))
    assert cache.counters.snapshot()["disk_hits"] == 2
    reader.close()


def test_a_small_body_gets_no_mapping_of_its_own():
    """A mapping takes a page at least: a memory tier of tiny objects' blocks (a few hundred bytes
    each) would hold several times its size."""
    import mmap

    from idcfs.blocks.buffers import SMALL, new_buffer

    assert isinstance(new_buffer(846), bytearray) and len(new_buffer(846)) == 846
    assert isinstance(new_buffer(SMALL - 1), bytearray)
    assert isinstance(new_buffer(SMALL), mmap.mmap)


def test_a_store_file_fetches_each_block_once_in_the_reading_thread():
    """What a series' headers are read through: the blocks a read touches, each fetched once,
    seeks back answered from those; nothing past the object's end."""
    import io

    from idcfs.blocks.object_file import StoreFile
    from idcfs.blocks.reader import ObjectRef

    data = bytes(range(256)) * 40  # 10,240 bytes
    asked: list[tuple[int, list[int]]] = []

    class Store:
        def get_blocks(self, aws_bucket, key, start, sizes, deadline=None, arrived=None):
            asked.append((start, sizes))
            return [bytearray(data[start : start + sizes[0]])]

    with io.BufferedReader(StoreFile(Store(), ObjectRef("b", "k", len(data)), 4096), 1024) as stream:
        assert stream.read(100) == data[:100]
        stream.seek(4000)
        assert stream.read(200) == data[4000:4200]  # across the first block's end
        stream.seek(10)
        assert stream.read(50) == data[10:60]  # the first block again: kept
        stream.seek(10_000)
        assert stream.read() == data[10_000:]  # the last block, short
        assert stream.read(10) == b""
    assert asked == [(0, [4096]), (4096, [4096]), (8192, [2048])]
