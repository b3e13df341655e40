"""Block arithmetic of the reader and single-flight of the cache, against an in-memory store.

Pure logic: the store here is a plain object holding bytes, not a patched S3 client; the
integration tests read through real servers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from idcfs.cache import BlockCache, SingleFlight
from idcfs.reader import ObjectRef, Reader
from idcfs.store import StoreError


class BytesStore:
    def __init__(self, objects: dict[str, bytes], short: bool = False, delay: float = 0.0) -> None:
        self.objects = objects
        self.short = short
        self.delay = delay
        self.gets: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()

    def get_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        with self.lock:
            self.gets.append((key, start, end))
        time.sleep(self.delay)
        data = self.objects[key][start:end]
        return data[:-1] if self.short else data


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


def test_concurrent_readers_of_one_block_share_one_get():
    store, reader = make(delay=0.2)
    ref = ObjectRef("b", "k", len(DATA))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: reader.read(ref, 10, 100), range(8)))
    assert all(r == DATA[10:110] for r in results)
    assert len(store.gets) == 1


def test_single_flight_shares_errors():
    flight: SingleFlight[int] = SingleFlight()
    calls = []
    gate = threading.Event()

    def failing():
        calls.append(1)
        gate.wait(1)
        raise StoreError("boom")

    def run():
        try:
            flight.run("k", failing)
        except StoreError:
            return "error"

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(run) for _ in range(4)]
        time.sleep(0.1)
        gate.set()
        assert [f.result() for f in futures] == ["error"] * 4
    assert len(calls) == 1
