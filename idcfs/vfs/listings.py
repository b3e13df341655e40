"""Series listings: fetched once per series, kept on disk forever and in a byte-capped memory LRU.

A listing is the one network answer the tree needs above the bytes (names and exact sizes of a
series' objects). This module is the listing path's one home: the cache, and the policy of
listing ahead (a study folder's series when it is listed, a series folder when it is looked up).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from cachetools import LRUCache

from idcfs.blocks.singleflight import SingleFlight
from idcfs.remote.buckets import object_url
from idcfs.remote.objects import ObjectInfo, ObjectTable
from idcfs.vfs.listing import SeriesListing
from idcfs.vfs.listing_disk import ListingDisk

if TYPE_CHECKING:
    from idcfs.remote.store import Store
    from idcfs.vfs.series_rows import SeriesRows

log = logging.getLogger(__name__)

V = TypeVar("V")

#: Seconds a lookup waits for the listing cache's disk before it asks the store instead.
DISK_READ_TIMEOUT = 10.0


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
        self._disk: ListingDisk | None = None
        self._disk_timeout = min(wait_timeout, DISK_READ_TIMEOUT)
        if directory is not None:
            try:
                self._disk = ListingDisk(directory)
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
        stored = self._disk.get(series_uuid, self._disk_timeout)
        if stored is None:
            return None
        try:
            if stored.startswith(b"["):  # an earlier version's JSON, [[name, size, etag], ...]
                return ObjectTable.of(ObjectInfo(name, int(size), etag) for name, size, etag in json.loads(stored))
            return ObjectTable.from_bytes(stored)
        except Exception:  # noqa: BLE001 - a damaged entry is a miss
            return None

    def _to_disk(self, series_uuid: str, objects: ObjectTable) -> None:
        """Behind the answer: the lookup that fetched the listing does not wait for the disk."""
        if self._disk is not None:
            self._disk.put(series_uuid, objects.to_bytes())

    def flush(self, timeout: float) -> bool:
        """Wait, ``timeout`` seconds at most, until the listings fetched so far are on disk."""
        return self._disk is None or self._disk.flush(timeout)

    def close(self, timeout: float) -> bool:
        """Write what is queued (``timeout`` seconds at most) and let the disk's thread go."""
        return self._disk is None or self._disk.close(timeout)

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


def listing_cache(directory: Path | None, max_bytes: int, wait_timeout: float) -> ListingCache[SeriesListing]:
    """The cache of series listings as the tree uses them."""
    return ListingCache(SeriesListing.of, SeriesListing.approximate_bytes, directory, max_bytes, wait_timeout)


#: A folder with more series than this does not get their listings fetched ahead.
MAX_LISTING_AHEAD = 256
#: Series warned about as empty, remembered so that each is logged once (bounded: forgetting
#: one only logs it again).
_WARNED_KEPT = 4096


class ListingPath:
    """Series listings as the tree asks for them: fetched once (cache, single flight), and
    fetched ahead where a listing is usually wanted next.

    - a folder of series listed (a study, in the default layout: ``ls -lR``, a viewer's
      import): its series' listings in parallel, unless it holds more than
      ``MAX_LISTING_AHEAD`` series;
    - a series folder looked up (``ls -l`` of a study): its own listing, unless its folder is
      one among many (the ``ls -l`` of a flat layout's root must not become a million LISTs),
      or as many listings are already on their way.
    """

    def __init__(
        self,
        listings: ListingCache[SeriesListing],
        store: Store,
        series: SeriesRows,
        run_ahead: Callable[[Callable[[], None]], None] | None,
    ) -> None:
        self.cache = listings
        self._store = store
        self._series = series
        self._run_ahead = run_ahead  # None: never ahead of demand (prefetch off)
        self._ahead: set[str] = set()  # series whose listing is queued or being fetched ahead
        self._ahead_lock = threading.Lock()
        self._warned: LRUCache[str, bool] = LRUCache(maxsize=_WARNED_KEPT)

    def get(self, row: int) -> SeriesListing:
        uuid, bucket = self._series.uuid(row), self._series.bucket(row)

        def fetch() -> ObjectTable:
            objects = self._store.list_series(bucket, uuid)
            if not objects:
                self._warn_empty(uuid, bucket)
            return objects

        return self.cache.get_or_fetch(uuid, fetch)

    def _warn_empty(self, uuid: str, bucket: str) -> None:
        """An empty series is asked again at every lookup (it may not be there yet): logged
        once, not at each of them (a ``find`` would write a line per lookup)."""
        with self._ahead_lock:
            if uuid in self._warned:
                return
            self._warned[uuid] = True
        log.warning(
            "series %s has no objects in %s (asked again at each lookup; logged once)",
            uuid,
            object_url(self._store.source, bucket, uuid + "/"),
        )

    def folder_listed(self, rows: range) -> None:
        """A folder of the series ``rows`` was listed: fetch their listings ahead."""
        if self._run_ahead is None or len(rows) > MAX_LISTING_AHEAD:
            return
        for row in rows:
            self._ahead_of_demand(row)

    def series_looked_up(self, row: int, siblings: int) -> None:
        """A series folder among ``siblings`` series folders was looked up."""
        if self._run_ahead is None or siblings > MAX_LISTING_AHEAD:
            return
        with self._ahead_lock:
            if len(self._ahead) >= MAX_LISTING_AHEAD:
                return
        self._ahead_of_demand(row)

    def _ahead_of_demand(self, row: int) -> None:
        """Fetch a series' listing in the background, unless it is in memory or on its way."""
        uuid = self._series.uuid(row)
        if self.cache.peek(uuid) is not None or self._run_ahead is None:
            return
        with self._ahead_lock:
            if uuid in self._ahead:
                return
            self._ahead.add(uuid)

        def fetch() -> None:
            try:
                self.get(row)
            finally:
                with self._ahead_lock:
                    self._ahead.discard(uuid)

        self._run_ahead(fetch)
