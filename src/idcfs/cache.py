"""Blocks and series listings kept in memory, with one fetch per key however many readers wait.

IDC objects are immutable (a new version of a series gets a new UUID), so nothing here is ever
revalidated: an entry is good until evicted. The memory tier is a byte-capped LRU; the disk tier
(diskcache) comes with the persistent-cache issue and plugs in behind :class:`BlockCache`'s
``get_or_fetch``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

from cachetools import LRUCache

V = TypeVar("V")


class SingleFlight(Generic[V]):
    """Concurrent calls for one key share one call of ``fetch``; its error reaches every waiter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Hashable, Future[V]] = {}

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


class BlockCache:
    """Byte-capped LRU of object blocks, keyed by ``(object key, block index)``."""

    def __init__(self, max_bytes: int) -> None:
        self._lru: LRUCache[Hashable, bytes] = LRUCache(maxsize=max(1, max_bytes), getsizeof=len)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._flight: SingleFlight[bytes] = SingleFlight()
        self.hits = 0
        self.misses = 0

    def get_or_fetch(self, key: Hashable, fetch: Callable[[], bytes]) -> bytes:
        with self._lock:
            block = self._lru.get(key)
            if block is not None:
                self.hits += 1
                return block
            self.misses += 1

        def fetch_and_keep() -> bytes:
            with self._lock:  # a fetch that finished since our miss
                block = self._lru.get(key)
            if block is not None:
                return block
            data = fetch()
            if len(data) <= self._max_bytes:
                with self._lock:
                    self._lru[key] = data
            return data

        return self._flight.run(key, fetch_and_keep)

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return int(self._lru.currsize)


class ListingCache(Generic[V]):
    """Series listings by series UUID, fetched once. Kept in memory for the mount's lifetime;
    a listing is a few kB per series opened, and immutable."""

    def __init__(self) -> None:
        self._listings: dict[str, V] = {}
        self._lock = threading.Lock()
        self._flight: SingleFlight[V] = SingleFlight()

    def get_or_fetch(self, series_uuid: str, fetch: Callable[[], V]) -> V:
        with self._lock:
            if series_uuid in self._listings:
                return self._listings[series_uuid]

        def fetch_and_keep() -> V:
            with self._lock:  # a fetch that finished since our miss
                if series_uuid in self._listings:
                    return self._listings[series_uuid]
            listing = fetch()
            with self._lock:
                self._listings[series_uuid] = listing
            return listing

        return self._flight.run(series_uuid, fetch_and_keep)

    def peek(self, series_uuid: str) -> V | None:
        with self._lock:
            return self._listings.get(series_uuid)
