"""Blocks kept in memory and on disk, with one fetch per key however many readers wait.

IDC objects are immutable (a new version of a series gets a new UUID), so nothing here is ever
revalidated: an entry is good until evicted, and the disk tier survives remounts. Blocks live in
a byte-capped memory LRU in front of a size-capped :class:`~idcfs.blocks.disk_tier.DiskTier` (block
files, LRU eviction, CRC-checked).

Locks: the cache's own (``_landings_lock``) guards its landing blocks and takes the single
flight's inside it (a pending check); the memory tier's and the single-flight's are never held
across a fetch or a disk read, nor one inside the other (see :mod:`idcfs.blocks.reader` for the
order where locks nest).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from idcfs.blocks.buffers import Block, Buffer, part_of
from idcfs.blocks.landing import Landing
from idcfs.blocks.singleflight import Abandoned, SingleFlight
from idcfs.blocks.tiers import KEEP, SPARE, WHOLE, DiskWrite, MemoryTier, Tier
from idcfs.remote.http import Arrived
from idcfs.remote.retry import StoreError
from idcfs.util.counters import Counters

log = logging.getLogger(__name__)

#: Blocks remembered to be written behind a fetch, at most.
_BEHIND_KEYS = 1 << 16
#: Threads fetching blocks for demand reads (each bounded by its deadline); more readers queue.
DEMAND_FETCHES = 64


class BlockCache:
    """A memory tier in front of an optional disk tier, with single-flight fetches."""

    def __init__(self, max_bytes: int, disk: Tier | None = None, wait_timeout: float = 90.0) -> None:
        #: Demand lookups per tier (``memory_hits``...), and prefetched bytes later read
        #: (``prefetch_useful_bytes``) or evicted unread (``prefetch_wasted_bytes``).
        self.counters = Counters(
            "memory_hits", "memory_misses", "disk_hits", "disk_misses", "prefetch_useful_bytes", "prefetch_wasted_bytes"
        )
        self.memory = MemoryTier(max_bytes, lambda size: self.counters.add("prefetch_wasted_bytes", size))
        self.disk = disk
        self._flight: SingleFlight[Block] = SingleFlight(wait_timeout)
        #: Keys of blocks to write to disk from memory once the writer has room (bounded: one
        #: forgotten is only a block not on disk).
        self._behind: deque[str] = deque(maxlen=_BEHIND_KEYS)
        #: Blocks on their way in for demand reads (one each), and the threads fetching them.
        self._landings: dict[str, Landing] = {}
        self._landings_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _mark_read(self, key: str) -> None:
        """A demand read used ``key``: if it was fetched ahead, that prefetch was useful."""
        size = self.memory.take_unread(key)
        if size is not None:
            self.counters.add("prefetch_useful_bytes", size)

    @property
    def unread_prefetched_bytes(self) -> int:
        return self.memory.unread_bytes

    def contains(self, key: str) -> bool:
        """Held in memory (cheap check; the disk is consulted only by a fetch)."""
        return self.memory.contains(key)

    def in_flight(self, key: str) -> bool:
        return self._flight.pending(key)

    def read(
        self,
        key: str,
        length: int,
        fetch: Callable[[], Block],
        wait: float | None,
        start: int,
        stop: int,
        fetch_arriving: Callable[[Arrived], Block] | None = None,
    ) -> Block | memoryview | bytes:
        """Bytes ``[start, stop)`` of the block ``key`` of ``length`` bytes: from memory, disk, or
        ``fetch`` (once, however many readers ask). The disk tier reads only that part, and the
        block stays on disk only: a small read of a block evicted from memory costs its own bytes,
        not the block's, and pushes nothing else out of memory. A demand read never waits for
        room in the disk writer's queue (background work does, in :meth:`fill`).

        ``fetch_arriving`` (a fetch that reports its bytes as they arrive): when nobody fetches
        the block yet, it is fetched in a thread of the demand pool, and readers are answered as
        soon as their bytes are in (:class:`~idcfs.blocks.landing.Landing`), before the block is
        whole."""
        part = self.cached_part(key, length, start, stop)
        if part is not None:
            return part
        if fetch_arriving is not None:
            landing, lead = self._landing_for(key)
            if landing is not None:
                if lead:
                    self._demand_pool().submit(self._land, landing, length, fetch_arriving)
                return landing.part(start, stop, self._flight.wait_timeout if wait is None else wait)
        block = self._flight.run(key, lambda: self._load(key, length, fetch), wait)
        self._mark_read(key)  # joined a prefetch that was on the wire
        return part_of(block, start, stop)

    def _load(self, key: str, length: int, fetch: Callable[[], Block]) -> Block:
        block = self.memory.get(key)  # a fetch that finished since our miss
        if block is not None:
            return block
        if self.disk is not None:
            self.counters.add("disk_misses")
        data = fetch()
        if len(data) != length:  # a cache must never hold a short block
            raise StoreError(f"block {key} has {len(data)} bytes, expected {length}")
        self.memory.put(key, data)
        if self.disk is not None:
            self.disk.put(key, data, SPARE)
        return data

    def _landing_for(self, key: str) -> tuple[Landing | None, bool]:
        """The block's landing and whether the caller starts its fetch; (None, False) when a
        fetch without one is on the wire already (a prefetch: the caller joins it)."""
        with self._landings_lock:
            landing = self._landings.get(key)
            if landing is not None:
                return landing, False
            if self._flight.pending(key):
                return None, False
            landing = self._landings[key] = Landing(key)
            return landing, True

    def _land(self, landing: Landing, length: int, fetch_arriving: Callable[[Arrived], Block]) -> None:
        """The fetch of a landing block, in the demand pool: settled (cached, or failed) on every path."""
        key = landing.key
        try:
            block = self._flight.run(key, lambda: self._load(key, length, lambda: fetch_arriving(landing.arrived)))
        except BaseException as error:
            landing.fail(error)
        else:
            landing.finish(block)
        finally:
            with self._landings_lock:
                self._landings.pop(key, None)

    def _demand_pool(self) -> ThreadPoolExecutor:
        with self._landings_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(DEMAND_FETCHES, thread_name_prefix="idcfs-demand")
            return self._pool

    def close(self) -> None:
        """Stop taking demand fetches (those under way finish within their deadlines)."""
        with self._landings_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def cached_part(self, key: str, length: int, start: int, stop: int) -> Block | memoryview | None:
        """Bytes ``[start, stop)`` of the block ``key`` if memory or disk holds it, else None
        (nothing is fetched; a miss in both is counted as a memory miss only)."""
        block = self.memory.get(key)
        if block is not None:
            self.counters.add("memory_hits")
            self._mark_read(key)
            return part_of(block, start, stop)
        self.counters.add("memory_misses")
        if self.disk is not None:
            part = self.disk.read(key, length, start, stop)
            if part is not None:
                self.counters.add("disk_hits")
                return part
        return None

    def fill(
        self,
        blocks: list[tuple[str, int]],
        fetch: Callable[[int, int], list[Buffer]],
        write: DiskWrite = KEEP,
    ) -> None:
        """Fetch ahead of demand the blocks of ``blocks`` (key, length) that are neither in memory
        nor on the wire: from disk where it has them, the rest with one ``fetch(first, last)``
        per contiguous stretch (positions in ``blocks``; it returns the stretch's blocks).

        Claim, fetch and settle happen here and only here: every block claimed is settled or
        released on every path (``finally``), so no reader can wait on a block nobody fetches.
        A failed stretch passes its error to its waiters; blocks after it that were never
        attempted are released as :class:`Abandoned`, and a waiter then fetches them itself.
        ``write``: how the blocks go to the disk tier (see :class:`DiskWrite`).
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
                    self._fetch_stretch(blocks, stretch, fetch, unsettled, write)
                    stretch = []
                stretch.append(i)
            if stretch:
                attempted = stretch
                self._fetch_stretch(blocks, stretch, fetch, unsettled, write)
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
        write: DiskWrite,
    ) -> None:
        fetched = fetch(stretch[0], stretch[-1])
        lengths = [blocks[i][1] for i in stretch]
        if [len(block) for block in fetched] != lengths:  # a cache must never hold a short block
            raise StoreError(
                f"run of {len(stretch)} blocks came back as {[len(b) for b in fetched]}, expected {lengths}"
            )
        for i, block in zip(stretch, fetched, strict=True):
            key = blocks[i][0]
            self.memory.put(key, block, ahead=True)
            unsettled.discard(i)
            self._flight.resolve(key, block)
            if self.disk is not None and not self.disk.put(key, block, write) and write.later:
                self._behind.append(key)

    @property
    def behind(self) -> bool:
        """Blocks wait to be written to disk from memory (see :meth:`write_behind`)."""
        return bool(self._behind)

    def write_behind(self) -> int:
        """Write to disk, waiting for room, the blocks a ``later`` write could not queue when
        they came, as far as memory still holds them; the number written."""
        written = 0
        while self._behind and self.disk is not None:
            try:
                key = self._behind.popleft()
            except IndexError:  # another thread took the last one
                break
            block = self.memory.get(key)
            if block is not None and self.disk.put(key, block, WHOLE):
                written += 1
        return written

    def _from_disk(self, key: str, length: int) -> Block | None:
        """The block from the disk tier (then also kept in memory), or None."""
        block = self.disk.get(key, length) if self.disk is not None else None
        if block is not None:
            self.memory.put(key, block)
        return block

    @property
    def bytes_used(self) -> int:
        return self.memory.bytes_used

    @property
    def max_bytes(self) -> int:
        return self.memory.capacity
