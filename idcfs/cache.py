"""Blocks and series listings kept in memory and on disk, with one fetch per key however many
readers wait.

IDC objects are immutable (a new version of a series gets a new UUID), so nothing here is ever
revalidated: an entry is good until evicted, and the disk tier survives remounts. Blocks live in
a byte-capped memory LRU in front of a size-capped :class:`~idcfs.disk_tier.DiskTier` (block
files, LRU eviction, CRC-checked); listings are small and kept on disk forever (diskcache).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

from idcfs.disk_tier import DiskTier
from idcfs.objects import ObjectInfo, ObjectTable
from idcfs.stats import Counters
from idcfs.store import StoreError
from idcfs.transport import Buffer, recycle_if_unreferenced

log = logging.getLogger(__name__)

V = TypeVar("V")


class Abandoned(StoreError):
    """A block claimed for a run was never fetched (an earlier stretch of the run failed): a
    waiter fetches it itself rather than inherit an error from bytes it never asked for."""


class SingleFlight(Generic[V]):
    """Concurrent calls for one key share one call of ``fetch``; its error reaches every waiter.

    A waiter never waits without a bound: after ``wait_timeout`` seconds (longer than any one
    fetch may take, retries included) it gives up with a :class:`StoreError`.
    """

    def __init__(self, wait_timeout: float = 90.0) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Hashable, Future[V]] = {}
        self.wait_timeout = wait_timeout
        #: Calls that joined a fetch already under way (read by the statistics and the tests).
        self.joined = 0

    def pending(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._pending

    def claim(self, key: Hashable) -> bool:
        """Take the lead for ``key`` outside :meth:`run` (for a fetch that serves several keys);
        False when someone already leads it. The claimer must :meth:`resolve` or :meth:`reject`
        (the one caller, :meth:`BlockCache.fill`, does so in a ``finally``)."""
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

    def run(self, key: Hashable, fetch: Callable[[], V], wait: float | None = None) -> V:
        """``fetch()`` once for all concurrent callers; a follower waits ``wait`` seconds at most
        (``wait_timeout`` if not given, and never longer)."""
        wait = self.wait_timeout if wait is None else min(wait, self.wait_timeout)
        for _ in range(3):  # joined, found abandoned, then led: at most a couple of turns
            with self._lock:
                future = self._pending.get(key)
                leader = future is None
                if leader:
                    future = Future()
                    self._pending[key] = future
                else:
                    self.joined += 1
            assert future is not None
            if leader:
                return self._lead(key, future, fetch)
            try:
                return future.result(timeout=wait)
            except FutureTimeout:
                raise StoreError(f"{key}: gave up waiting {wait:g}s for another thread's fetch") from None
            except Abandoned:
                continue  # nobody fetched it: take the lead
        raise StoreError(f"{key}: fetch abandoned repeatedly")

    def _lead(self, key: Hashable, future: Future[V], fetch: Callable[[], V]) -> V:
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
        # Its buffer serves the next body, if nobody holds the block any more (``value`` is
        # the one reference left then: cachetools' caller drops what we return).
        recycle_if_unreferenced(value)
        return key, value


class BlockCache:
    """Memory LRU in front of an optional :class:`DiskTier`, with single-flight fetches."""

    def __init__(self, max_bytes: int, disk: DiskTier | None = None, wait_timeout: float = 90.0) -> None:
        self._lru = _EvictionAwareLRU(max(1, max_bytes), self._evicted)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._flight: SingleFlight[bytes] = SingleFlight(wait_timeout)
        self.disk = disk
        #: Blocks fetched ahead of demand (settled) and not read yet: key -> its length. Bounded
        #: by the memory tier, since eviction removes them.
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

    def get_or_fetch(
        self, key: str, length: int, fetch: Callable[[], bytes], background: bool = False, wait: float | None = None
    ) -> bytes:
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

        block = self._flight.run(key, load, wait)
        if self._unread:  # joined a prefetch that was on the wire
            self._mark_read(key)
        return block

    def fill(
        self,
        blocks: list[tuple[str, int]],
        fetch: Callable[[int, int], list[Buffer]],
        disk_wait: bool = True,
    ) -> None:
        """Fetch ahead of demand the blocks of ``blocks`` (key, length) that are neither in memory
        nor on the wire: from disk where it has them, the rest with one ``fetch(first, last)``
        per contiguous stretch (positions in ``blocks``; it returns the stretch's blocks).

        Claim, fetch and settle happen here and only here: every block claimed is settled or
        released on every path (``finally``), so no reader can wait on a block nobody fetches.
        A failed stretch passes its error to its waiters; blocks after it that were never
        attempted are released as :class:`Abandoned`, and a waiter then fetches them itself.
        ``disk_wait``: wait for room in the disk writer's queue, or drop a block from the disk
        tier when there is none (it stays in memory); the blocks of a stream (no wait) are
        also written past the page cache.
        """
        claimed = [i for i, (key, _) in enumerate(blocks) if not self.contains(key) and self._flight.claim(key)]
        unsettled = set(claimed)
        attempted: list[int] = []
        failure: BaseException | None = None
        try:
            stretch: list[int] = []
            for i in claimed:
                key, length = blocks[i]
                block = self._from_disk(key, length)
                if block is not None:
                    unsettled.discard(i)
                    self._flight.resolve(key, block)
                    continue
                if stretch and stretch[-1] != i - 1:
                    attempted = stretch
                    self._fetch_stretch(blocks, stretch, fetch, unsettled, disk_wait)
                    stretch = []
                stretch.append(i)
            if stretch:
                attempted = stretch
                self._fetch_stretch(blocks, stretch, fetch, unsettled, disk_wait)
        except BaseException as error:
            failure = error
            raise
        finally:
            for i in unsettled:
                key = blocks[i][0]
                if failure is not None and i in attempted:
                    self._flight.reject(key, failure)
                else:
                    self._flight.reject(key, Abandoned(f"block {key} was not fetched"))

    def _fetch_stretch(
        self,
        blocks: list[tuple[str, int]],
        stretch: list[int],
        fetch: Callable[[int, int], list[Buffer]],
        unsettled: set[int],
        disk_wait: bool,
    ) -> None:
        fetched = fetch(stretch[0], stretch[-1])
        lengths = [blocks[i][1] for i in stretch]
        if [len(block) for block in fetched] != lengths:  # a cache must never hold a short block
            raise StoreError(
                f"run of {len(stretch)} blocks came back as {[len(b) for b in fetched]}, expected {lengths}"
            )
        for i, block in zip(stretch, fetched, strict=True):
            key = blocks[i][0]
            self._remember(key, block, ahead_of_demand=True)
            unsettled.discard(i)
            self._flight.resolve(key, block)
            if self.disk is not None:
                self.disk.put(key, block, wait=disk_wait, stream=not disk_wait)

    def _from_disk(self, key: str, length: int) -> bytes | None:
        """The block from the disk tier (then also kept in memory), or None."""
        block = self.disk.get(key, length) if self.disk is not None else None
        if block is not None:
            self._remember(key, block)
        return block

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return int(self._lru.currsize)

    @property
    def max_bytes(self) -> int:
        return self._max_bytes


class ListingCache(Generic[V]):
    """Series listings by series UUID: fetched once, kept on disk forever (they are immutable)
    and in a memory LRU capped at ``max_bytes`` (a ``find`` over millions of objects must not
    grow the daemon), plus the last listing too large for the cap on its own.

    The disk holds the store's plain answer (:meth:`ObjectTable.to_bytes`: its buffers as they
    are, never a pickled class of this program: renaming a class must not turn every cached
    listing into garbage); the memory tier holds ``build(objects)``, whose size ``sizeof``
    estimates.
    An empty listing is never kept, in memory or on disk: the series may just not be there yet.
    """

    def __init__(
        self,
        build: Callable[[ObjectTable], V],
        sizeof: Callable[[V], int],
        directory: Path | None,
        max_bytes: int,
        wait_timeout: float = 90.0,
    ) -> None:
        self._build = build
        self._memory: LRUCache[str, V] = LRUCache(maxsize=max(1, max_bytes), getsizeof=sizeof)
        # The one listing in use that is larger than the whole cap (a 92,000-object series under
        # a small cap): without it, every lookup in that folder would parse it from disk again.
        self._oversized: tuple[str, V] | None = None
        self._lock = threading.Lock()
        self._flight: SingleFlight[V] = SingleFlight(wait_timeout)
        self._disk: Any = None
        self._disk_paused_until = 0.0
        if directory is not None:
            try:
                import diskcache

                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._disk = diskcache.Cache(str(directory), size_limit=2**40, eviction_policy="none")
            except Exception as error:  # noqa: BLE001
                log.warning("listing cache %s unusable (%s); listings are kept in memory only", directory, error)

    def get_or_fetch(self, series_uuid: str, fetch: Callable[[], ObjectTable]) -> V:
        listing = self.peek(series_uuid)
        if listing is not None:
            return listing

        def load() -> V:
            listing = self.peek(series_uuid)  # a fetch that finished since our miss
            if listing is not None:
                return listing
            objects = self._from_disk(series_uuid)
            if objects is None:
                objects = fetch()
                if objects:
                    self._to_disk(series_uuid, objects)
            listing = self._build(objects)
            if objects:
                with self._lock:
                    try:
                        self._memory[series_uuid] = listing
                    except ValueError:  # larger than the whole cap: kept alone, beside it
                        self._oversized = (series_uuid, listing)
            return listing

        return self._flight.run(series_uuid, load)

    def _from_disk(self, series_uuid: str) -> ObjectTable | None:
        if self._disk is None:
            return None
        try:
            stored = self._disk.get(series_uuid)
            if not isinstance(stored, bytes):
                return None  # absent, or an entry of a format older still
            if stored.startswith(b"["):  # idcfs 0.3's JSON, [[name, size, etag], ...]
                return ObjectTable.of(ObjectInfo(name, int(size), etag) for name, size, etag in json.loads(stored))
            return ObjectTable.from_bytes(stored)
        except Exception:  # noqa: BLE001 - a damaged entry is a miss
            return None

    def _to_disk(self, series_uuid: str, objects: ObjectTable) -> None:
        if self._disk is None or time.monotonic() < self._disk_paused_until:
            return
        try:
            self._disk.set(series_uuid, objects.to_bytes())
        except Exception as error:  # noqa: BLE001
            log.warning("listing cache cannot be written (%s); trying again in a minute", error)
            self._disk_paused_until = time.monotonic() + 60

    def peek(self, series_uuid: str) -> V | None:
        with self._lock:
            listing = self._memory.get(series_uuid)
            if listing is None and self._oversized is not None and self._oversized[0] == series_uuid:
                listing = self._oversized[1]
            return listing

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return int(self._memory.currsize)

    @property
    def max_bytes(self) -> int:
        return int(self._memory.maxsize)
