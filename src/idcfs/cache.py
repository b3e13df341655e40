"""Blocks and series listings kept in memory and on disk, with one fetch per key however many
readers wait.

IDC objects are immutable (a new version of a series gets a new UUID), so nothing here is ever
revalidated: an entry is good until evicted, and the disk tier survives remounts. Blocks live in
a byte-capped memory LRU in front of a size-capped diskcache (LRU eviction); listings are small
and kept on disk forever. Every disk block carries a CRC32 and its length is checked on the way
in and out, so a torn write (a crash, a full disk) reads as a miss, never as wrong bytes. A disk
tier that fails (full, read-only, removed) is switched off with one warning: reads go on over the
network.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import threading
import zlib
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

from idcfs.stats import Counters
from idcfs.store import StoreError

log = logging.getLogger(__name__)

V = TypeVar("V")

_CRC = struct.Struct("<I")


class SingleFlight(Generic[V]):
    """Concurrent calls for one key share one call of ``fetch``; its error reaches every waiter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Hashable, Future[V]] = {}

    def pending(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._pending

    def claim(self, key: Hashable) -> bool:
        """Take the lead for ``key`` outside :meth:`run` (for a fetch that serves several keys);
        False when someone already leads it. The claimer must :meth:`resolve` or :meth:`reject`."""
        with self._lock:
            if key in self._pending:
                return False
            self._pending[key] = Future()
            return True

    def resolve(self, key: Hashable, value: V) -> None:
        with self._lock:
            future = self._pending.pop(key)
        future.set_result(value)

    def reject(self, key: Hashable, error: BaseException) -> None:
        with self._lock:
            future = self._pending.pop(key)
        future.set_exception(error)

    def run(self, key: Hashable, fetch: Callable[[], V]) -> V:
        with self._lock:
            future = self._pending.get(key)
            leader = future is None
            if leader:
                future = Future()
                self._pending[key] = future
        assert future is not None
        if not leader:
            return future.result()
        try:
            value = fetch()
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(value)
            return value
        finally:
            with self._lock:
                del self._pending[key]


class _EvictionAwareLRU(LRUCache):  # type: ignore[type-arg]
    """An LRU that tells ``on_evict`` what it pushes out (for prefetch bytes wasted)."""

    def __init__(self, maxsize: int, on_evict: Callable[[str, bytes], None]) -> None:
        super().__init__(maxsize=maxsize, getsizeof=len)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, bytes]:
        key, value = super().popitem()
        self._on_evict(key, value)
        return key, value


class DiskTier:
    """A diskcache folder of blocks, capped at ``size_limit`` bytes, least recently used out first.

    Writes go through one writer thread, in batches of one SQLite transaction: fetch threads hand
    a block over and move on (SQLite takes one writer at a time, and a fetch must not wait for
    it). Blocks waiting to be written are still served by :meth:`get`. The queue is bounded by
    bytes: background fetches wait for room, a demand read's block is dropped instead.
    """

    def __init__(self, directory: Path, size_limit: int, queue_bytes: int = 128 << 20) -> None:
        import diskcache

        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self.size_limit = size_limit
        # cull_limit: evict enough per write that the cap is never exceeded by more than a block.
        self._cache = diskcache.Cache(
            str(directory),
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            cull_limit=64,
            statistics=False,
        )
        self._disabled = False
        # SQLite lets one writer in at a time, and a hit under LRU is a write (its access time).
        # Threads that find the lock taken would back off in SQLite's busy handler for up to
        # 100 ms; queueing them on a Python lock instead costs microseconds.
        self._db_lock = threading.Lock()
        self._queue_bytes = queue_bytes
        self._pending: dict[str, bytes] = {}  # insertion-ordered: the write queue
        self._pending_bytes = 0
        self._condition = threading.Condition()
        self._writer: threading.Thread | None = None
        self.dropped = 0

    def get(self, key: str, length: int) -> bytes | None:
        """The block, if stored (or queued) whole and intact."""
        if self._disabled:
            return None
        with self._condition:
            queued = self._pending.get(key)
        if queued is not None:
            return queued
        try:
            # `in` is a plain SELECT; get() takes the write lock (to update the LRU access time)
            # even for a miss, which would queue every cold fetch behind the writer.
            if key not in self._cache:
                return None
            with self._db_lock:
                stored = self._cache.get(key)
        except Exception as error:  # noqa: BLE001 - any disk trouble is a miss
            log.debug("disk cache read of %s failed: %s", key, error)
            return None
        if not isinstance(stored, bytes) or len(stored) != length + _CRC.size:
            return None
        data, (crc,) = stored[:length], _CRC.unpack(stored[length:])
        if zlib.crc32(data) != crc:
            log.warning("disk cache block %s is damaged; fetching it again", key)
            self.discard(key)
            return None
        return data

    def put(self, key: str, data: bytes, wait: bool = True) -> None:
        """Queue ``data`` for writing; with ``wait=False`` drop it rather than wait for room."""
        with self._condition:
            if self._disabled or key in self._pending:
                return
            while self._pending_bytes + len(data) > self._queue_bytes and self._pending:
                if not wait:
                    self.dropped += 1
                    return
                self._condition.wait()
                if self._disabled:
                    return
            self._pending[key] = data
            self._pending_bytes += len(data)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="idcfs-disk-writer", daemon=True)
                self._writer.start()
            self._condition.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._condition:
                while not self._pending:
                    self._condition.wait()
                batch = list(self._pending.items())[:8]
            try:
                with self._db_lock, self._cache.transact():
                    for key, data in batch:
                        # read=True: diskcache then writes in 4 MiB chunks; given bytes, it would
                        # iterate a BytesIO line by line (thousands of writes for a binary block).
                        record = io.BytesIO(data + _CRC.pack(zlib.crc32(data)))
                        self._cache.set(key, record, read=True)
            except Exception as error:  # noqa: BLE001 - degrade, never fail a read
                with self._condition:
                    if not self._disabled:
                        self._disabled = True
                        log.warning(
                            "disk cache %s cannot be written (%s); reading from the network only", self.directory, error
                        )
            with self._condition:
                for key, data in batch:
                    if self._pending.pop(key, None) is not None:
                        self._pending_bytes -= len(data)
                if self._disabled:
                    self._pending.clear()
                    self._pending_bytes = 0
                self._condition.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued block is written (or the tier gave up); False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._pending, timeout)

    @property
    def bytes_used(self) -> int:
        """Bytes stored (not counting blocks still queued for writing)."""
        try:
            return int(self._cache.volume())
        except Exception:  # noqa: BLE001 - statistics never fail a read
            return 0

    def discard(self, key: str) -> None:
        with contextlib.suppress(Exception):
            self._cache.delete(key)

    def close(self) -> None:
        self.flush(timeout=30)
        self._cache.close()


class BlockCache:
    """Memory LRU in front of an optional :class:`DiskTier`, with single-flight fetches."""

    def __init__(self, max_bytes: int, disk: DiskTier | None = None) -> None:
        self._lru = _EvictionAwareLRU(max(1, max_bytes), self._evicted)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._flight: SingleFlight[bytes] = SingleFlight()
        self.disk = disk
        #: Blocks fetched ahead of demand (settled) and not read yet: key -> bytes. Bounded by
        #: the memory tier, since eviction removes them.
        self._unread: dict[str, int] = {}
        #: Demand lookups per tier (``memory_hits``...), and prefetched bytes later read
        #: (``prefetch_useful_bytes``) or evicted unread (``prefetch_wasted_bytes``).
        self.counters = Counters(
            "memory_hits", "memory_misses", "disk_hits", "disk_misses", "prefetch_useful_bytes", "prefetch_wasted_bytes"
        )

    def _evicted(self, key: str, value: bytes) -> None:  # called with self._lock held
        size = self._unread.pop(key, None)
        if size is not None:
            self.counters.add("prefetch_wasted_bytes", size)

    def _memory(self, key: str) -> bytes | None:
        with self._lock:
            return self._lru.get(key)

    def _mark_read(self, key: str) -> None:
        """A demand read used ``key``: if it was fetched ahead, that prefetch was useful."""
        with self._lock:
            size = self._unread.pop(key, None)
        if size is not None:
            self.counters.add("prefetch_useful_bytes", size)

    @property
    def unread_prefetched_bytes(self) -> int:
        with self._lock:
            return sum(self._unread.values())

    def _remember(self, key: str, data: bytes, ahead_of_demand: bool = False) -> None:
        if len(data) <= self._max_bytes:
            with self._lock:
                self._lru[key] = data
                if ahead_of_demand:
                    self._unread[key] = len(data)

    def contains(self, key: str) -> bool:
        """Held in memory (cheap check; the disk is consulted only by a fetch)."""
        with self._lock:
            return key in self._lru

    def in_flight(self, key: str) -> bool:
        return self._flight.pending(key)

    def get_or_fetch(self, key: str, length: int, fetch: Callable[[], bytes], background: bool = False) -> bytes:
        """The block ``key`` of ``length`` bytes: from memory, disk, or ``fetch`` (once).

        ``background`` work may wait for room in the disk write queue; a demand read never does.
        """
        block = self._memory(key)
        if block is not None:
            self.counters.add("memory_hits")
            if self._unread:
                self._mark_read(key)
            return block
        self.counters.add("memory_misses")

        def load() -> bytes:
            block = self._memory(key)  # a fetch that finished since our miss
            if block is None:
                block = self._from_disk(key, length)
                if self.disk is not None:
                    self.counters.add("disk_hits" if block is not None else "disk_misses")
            if block is not None:
                return block
            data = fetch()
            if len(data) != length:  # a cache must never hold a short block
                raise StoreError(f"block {key} has {len(data)} bytes, expected {length}")
            self._remember(key, data)
            if self.disk is not None:
                self.disk.put(key, data, wait=background)
            return data

        block = self._flight.run(key, load)
        if self._unread:  # joined a prefetch that was on the wire
            self._mark_read(key)
        return block

    def claim(self, keys: list[str]) -> list[str]:
        """The keys, of ``keys``, that are neither in memory nor being fetched, now claimed by the
        caller, who must :meth:`settle` or :meth:`abandon` each (one GET serving several blocks)."""
        return [key for key in keys if not self.contains(key) and self._flight.claim(key)]

    def settle(self, key: str, data: bytes) -> None:
        """Hand a claimed block fetched from the network (ahead of demand) to memory, disk and
        any waiters."""
        self._remember(key, data, ahead_of_demand=True)
        if self.disk is not None:
            self.disk.put(key, data, wait=True)
        self._flight.resolve(key, data)

    def settle_from_disk(self, key: str, length: int) -> bool:
        """Settle a claimed block from the disk tier, if it holds it."""
        block = self._from_disk(key, length)
        if block is None:
            return False
        self._flight.resolve(key, block)
        return True

    def _from_disk(self, key: str, length: int) -> bytes | None:
        """The block from the disk tier (then also kept in memory), or None."""
        block = self.disk.get(key, length) if self.disk is not None else None
        if block is not None:
            self._remember(key, block)
        return block

    def abandon(self, key: str, error: BaseException) -> None:
        self._flight.reject(key, error)

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return int(self._lru.currsize)

    @property
    def max_bytes(self) -> int:
        return self._max_bytes


class ListingCache(Generic[V]):
    """Series listings by series UUID, fetched once, kept in memory and (optionally) on disk
    forever: a listing is a few kB, and immutable."""

    def __init__(self, directory: Path | None = None, persist: Callable[[V], bool] = bool) -> None:
        self._persist = persist  # e.g. not an empty listing: the series may just not be there yet
        self._listings: dict[str, V] = {}
        self._lock = threading.Lock()
        self._flight: SingleFlight[V] = SingleFlight()
        self._disk: Any = None
        if directory is not None:
            try:
                import diskcache

                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._disk = diskcache.Cache(str(directory), size_limit=2**40, eviction_policy="none")
            except Exception as error:  # noqa: BLE001
                log.warning("listing cache %s unusable (%s); listings are kept in memory only", directory, error)

    def get_or_fetch(self, series_uuid: str, fetch: Callable[[], V]) -> V:
        with self._lock:
            if series_uuid in self._listings:
                return self._listings[series_uuid]

        def load() -> V:
            with self._lock:  # a fetch that finished since our miss
                if series_uuid in self._listings:
                    return self._listings[series_uuid]
            listing = self._from_disk(series_uuid)
            if listing is None:
                listing = fetch()
                self._to_disk(series_uuid, listing)
            with self._lock:
                self._listings[series_uuid] = listing
            return listing

        return self._flight.run(series_uuid, load)

    def _from_disk(self, series_uuid: str) -> V | None:
        if self._disk is None:
            return None
        try:
            return self._disk.get(series_uuid)
        except Exception:  # noqa: BLE001 - a damaged entry is a miss
            return None

    def _to_disk(self, series_uuid: str, listing: V) -> None:
        if self._disk is None or not self._persist(listing):
            return
        try:
            self._disk.set(series_uuid, listing)
        except Exception as error:  # noqa: BLE001
            log.warning("listing cache cannot be written (%s); keeping listings in memory only", error)
            self._disk = None

    def peek(self, series_uuid: str) -> V | None:
        with self._lock:
            return self._listings.get(series_uuid)
