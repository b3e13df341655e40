"""Where blocks are kept: the tier interface, and the memory tier.

The block cache (:mod:`idcfs.blocks.cache`) composes a memory tier in front of an optional disk
tier (:class:`~idcfs.blocks.disk_tier.DiskTier`); both answer :class:`Tier`, so a tier can be
added or left out without the cache's claim, fetch and settle logic changing (mountpoint-s3's
``DataCache`` and its multilevel cache are the model).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import LRUCache

from idcfs.blocks.buffers import Block, recycle_if_unreferenced


@dataclass(frozen=True)
class DiskWrite:
    """How a block goes to a disk tier (a memory tier keeps it whatever this says)."""

    #: Wait for room in the writer's queue (later reads expect the block on disk), or drop the
    #: block from the disk tier when there is none (it stays in memory).
    wait: bool
    #: Past the page cache: the bytes of a large object would push everything else out of
    #: memory and stall on write-back, while the device itself takes them fast.
    direct: bool = False
    #: Not waiting, and not lost either: a block the writer has no room for now is written
    #: later, from memory (if memory still holds it then).
    later: bool = False


#: A series' files, fetched ahead: kept, through the page cache (small files, read soon).
KEEP = DiskWrite(wait=True)
#: A block a reader fetched itself: kept if the writer has room (the reader never waits).
SPARE = DiskWrite(wait=False)
#: A stream's readahead: never holds the reader back, and passes the page cache by.
STREAM = DiskWrite(wait=False, direct=True)
#: An object read at random, fetched whole: kept, and past the page cache (a gigabyte written
#: through it stalled on write-back once memory was full: 5-11 s for the 1 GB random-read row,
#: against 3.5 s past it).
WHOLE = DiskWrite(wait=True, direct=True)
#: An object read at random that the memory tier holds, fetched whole: its fetch never waits for
#: the disk writer (behind the writer's queue a gigabyte came at the writer's pace, not the
#: network's); what the writer has no room for is written behind the fetch, from memory.
WHOLE_BEHIND = DiskWrite(wait=False, direct=True, later=True)


class Tier(Protocol):
    """Blocks by key. A block is immutable: a key's bytes never change, so nothing is
    revalidated; a tier may drop any block at any time."""

    def get(self, key: str, length: int) -> Block | None:
        """The block of exactly ``length`` bytes, or None (absent, or not as expected)."""
        ...

    def read(self, key: str, length: int, start: int, stop: int) -> Block | memoryview | None:
        """Bytes ``[start, stop)`` of the block of ``length`` bytes, or None: a tier that can
        read part of a block answers a small read without reading the block."""
        ...

    def put(self, key: str, block: Block, write: DiskWrite = KEEP) -> bool:
        """Keep ``block`` if there is room (``write``: how, for a disk tier); whether it was
        taken (kept, or queued to be)."""
        ...

    @property
    def bytes_used(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the blocks taken are kept (a disk tier's queue written); False on timeout."""
        ...

    def close(self) -> None:
        """Finish what is under way (a disk tier's writes); the tier is not used after."""
        ...


class _EvictionAwareLRU(LRUCache[str, Block]):
    """An LRU that tells ``on_evict`` what it pushes out."""

    def __init__(self, maxsize: int, on_evict: Callable[[str], None]) -> None:
        super().__init__(maxsize=maxsize, getsizeof=len)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, Block]:
        key, value = super().popitem()
        self._on_evict(key)
        # Its buffer serves the next body, if nobody holds the block any more (``value`` is
        # the one reference left then: cachetools' caller drops what we return).
        recycle_if_unreferenced(value)
        return key, value


class MemoryTier:
    """A byte-capped LRU of blocks, and which of them were fetched ahead of demand and not read
    yet (so the cache can tell prefetch that was useful from prefetch that was wasted).

    Locks: ``_lock`` guards the LRU and that bookkeeping, nothing else; held, it may take the
    buffer pool's lock (an evicted block's buffer goes back), never another.
    """

    def __init__(self, max_bytes: int, on_wasted: Callable[[int], None]) -> None:
        self._lru = _EvictionAwareLRU(max(1, max_bytes), self._evicted)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._on_wasted = on_wasted
        #: Blocks fetched ahead of demand and not read yet: key -> its length (bounded by the
        #: LRU, since eviction removes them).
        self._unread: dict[str, int] = {}

    def _evicted(self, key: str) -> None:  # with self._lock held
        size = self._unread.pop(key, None)
        if size is not None:
            self._on_wasted(size)

    def get(self, key: str, length: int = 0) -> Block | None:
        with self._lock:
            return self._lru.get(key)

    def put(self, key: str, block: Block, write: DiskWrite = KEEP, ahead: bool = False) -> bool:
        """``ahead``: fetched ahead of demand (counted useful when read, wasted when evicted)."""
        if len(block) > self._max_bytes:
            return False
        with self._lock:
            self._lru[key] = block
            if ahead:
                self._unread[key] = len(block)
        return True

    def contains(self, key: str) -> bool:
        with self._lock:
            return key in self._lru

    def take_unread(self, key: str) -> int | None:
        """A demand read used ``key``: its length if it was fetched ahead and not read before."""
        if not self._unread:  # the common case, without the lock (a stale answer costs a count)
            return None
        with self._lock:
            return self._unread.pop(key, None)

    @property
    def unread_bytes(self) -> int:
        with self._lock:
            return sum(self._unread.values())

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return int(self._lru.currsize)

    @property
    def capacity(self) -> int:
        return self._max_bytes

    def close(self) -> None:
        pass
