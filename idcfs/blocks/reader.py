"""Turns ``read(offset, size)`` on an object into block fetches, with readahead and series prefetch.

Blocks are aligned (``index * block_size``), so any two readers of a region share cache entries
and in-flight fetches. An object no larger than one block is a single whole-object GET. Every
block's length is checked against the object's size from the series listing before it is used.

Behind real cloud latency (10-50 ms a request) a reader that fetches one block at a time is
latency-bound, so two kinds of work run ahead of demand, in a pool of background threads:

- **readahead** (per open file): a read that continues where the last one ended and reaches a
  block the stream had not reached, once the stream has read one block from end to end,
  doubles a window of blocks fetched ahead in parallel, up to ``max_window`` blocks
  (mountpoint-s3's prefetcher is the model); any other read resets it. A stream grows by
  blocks consumed, not by read calls: a DICOM header parsed in hundreds of tiny reads inside
  its first block, or a frame read after a jump (a tile, a lazy frame), costs the blocks it
  touches, not a stream.
- **series prefetch**: people read a series whole (viewers, dcm2niix, SimpleITK), so opening one
  instance queues the series' other objects, in listing order from the opened one, unless the
  series is larger than ``max_series_bytes``.

Demand reads never queue behind this work: they fetch inline, joining a background fetch of the
same block only when it is already on the wire. Background fetches hold an in-flight byte
budget, so prefetch cannot balloon memory.

Lock order (the blocks package's locks, where they nest; no lock is held across a fetch):
``Reader._queued_lock`` before ``MemoryTier._lock`` and ``SingleFlight._lock`` (planning a run
asks the cache what it holds); ``MemoryTier._lock`` before ``Recycled._lock`` (an eviction hands
its buffer back). ``ReadState.lock``, ``Reader._series_lock``, ``BackgroundFetcher._condition``
and the disk tier's ``_condition`` nest no other lock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from idcfs.blocks.buffers import RECYCLED, Block, Buffer
from idcfs.blocks.cache import BlockCache
from idcfs.blocks.policy import DEFAULT_BLOCK_SIZE, PrefetchPolicy
from idcfs.blocks.tiers import KEEP, STREAM, WHOLE, WHOLE_BEHIND, DiskWrite
from idcfs.remote.http import Arrived
from idcfs.remote.store import Store

log = logging.getLogger(__name__)

#: A read starting this many blocks (or fewer) before or after where the last one ended is
#: still sequential: the kernel's requests of one reader arrive out of order by a few blocks
#: (a ``dd`` through 1 MiB readahead looked "random" after ~4 such swaps, and was fetched whole).
SEQUENTIAL_SLACK_BLOCKS = 3

#: Background priorities: readahead of the file being read first, then the rest of its series,
#: then blocks written to disk behind a fetch.
READAHEAD, SERIES, BEHIND = 0, 1, 2


@dataclass(frozen=True)
class ObjectRef:
    """One object to read: where it is and its exact size (from the series listing)."""

    aws_bucket: str
    key: str
    size: int


@dataclass
class ReadState:
    """Per open file: where the next sequential read would start, and the readahead window."""

    next_offset: int = 0
    window: int = 0
    run_start: int = 0  # where the current run of sequential reads began
    reached: int = 0  # the furthest block the current run has read
    ahead_until: int = 0  # the last block readahead has been scheduled for
    jumps: int = 0  # reads that did not continue where the last one ended
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class BackgroundFetcher:
    """A priority queue of block fetches served by a few threads, under an in-flight byte budget.

    Threads start on first use, or all at once with :meth:`start` (never before the FUSE daemon
    is running).
    """

    def __init__(self, workers: int, budget_bytes: int) -> None:
        self._workers = max(1, workers)
        self._budget = max(1, budget_bytes)
        self._queue: list[tuple[int, int, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._in_flight = 0
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.completed = 0
        self.failed = 0

    def submit(self, priority: int, nbytes: int, task: Callable[[], None]) -> None:
        with self._condition:
            if self._closed:
                return
            heapq.heappush(self._queue, (priority, next(self._counter), nbytes, task))
            if len(self._threads) < self._workers:
                self._add_worker()
            self._condition.notify()

    def start(self) -> None:
        """Start every worker now (a serving process, once it runs): a first task, such as the
        listing a folder's lookup fetches ahead, then waits for no thread to be made."""
        with self._condition:
            while not self._closed and len(self._threads) < self._workers:
                self._add_worker()

    def _add_worker(self) -> None:
        thread = threading.Thread(target=self._work, name=f"idcfs-prefetch-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._closed and (
                    not self._queue or (self._in_flight and self._in_flight + self._queue[0][2] > self._budget)
                ):
                    self._condition.wait(1.0)  # idle: look again; nothing here waits unbounded
                if self._closed:
                    return
                _, _, nbytes, task = heapq.heappop(self._queue)
                self._in_flight += nbytes
            try:
                task()
                self.completed += 1
            except Exception as error:  # noqa: BLE001 - background work never takes the daemon down
                self.failed += 1
                log.debug("background fetch failed: %s", error)
            finally:
                with self._condition:
                    self._in_flight -= nbytes
                    if self._queue:  # work the budget held back; idle workers need no wake-up
                        self._condition.notify_all()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._queue.clear()
            self._condition.notify_all()


class Reader:
    def __init__(
        self,
        store: Store,
        cache: BlockCache,
        block_size: int = DEFAULT_BLOCK_SIZE,
        prefetch: PrefetchPolicy | None = None,
    ) -> None:
        if block_size <= 0:
            raise ValueError("block size must be positive")
        self.store = store
        self.cache = cache
        self.block_size = block_size
        self.prefetch = prefetch or PrefetchPolicy(mode="off")
        self.background = BackgroundFetcher(self.prefetch.workers, self.prefetch.budget_bytes)
        # Series (and objects read at random) queued once already (bounded: forgetting one only
        # means queuing it again).
        self._series_scheduled: LRUCache[str, bool] = LRUCache(maxsize=1 << 16)
        self._objects_scheduled: LRUCache[str, bool] = LRUCache(maxsize=1 << 12)
        self._queued: set[str] = set()  # blocks waiting in the background queue or being fetched
        self._queued_lock = threading.Lock()
        self._series_lock = threading.Lock()
        self._writing_behind = False  # a write-behind task is queued or running

    # -- demand reads -------------------------------------------------------------------------

    def read(self, obj: ObjectRef, offset: int, size: int, state: ReadState | None = None) -> Block | memoryview:
        """Bytes ``[offset, offset + size)`` clipped to the object's end."""
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        end = min(obj.size, offset + size)
        if offset >= end:
            return b""
        first, last = offset // self.block_size, (end - 1) // self.block_size
        if state is not None and self.prefetch.mode != "off":
            self._read_ahead(obj, offset, end, last, state)
        # One deadline for the whole read, however many blocks it spans and whoever fetches them.
        deadline = time.monotonic() + self.store.retry.deadline
        pieces = []
        for index in range(first, last + 1):
            block_start = index * self.block_size
            start, stop = max(offset, block_start) - block_start, min(end - block_start, self.block_size)
            pieces.append(self.block(obj, index, deadline, start, stop))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def block_key(self, obj: ObjectRef, index: int) -> str:
        return f"{obj.key}@{self.block_size}#{index}"

    def block(self, obj: ObjectRef, index: int, deadline: float | None, start: int, stop: int) -> Block | memoryview:
        """Bytes ``[start, stop)`` of block ``index``."""
        begin, length = index * self.block_size, self._block_length(obj, index)

        def fetch() -> Buffer:
            return self.store.get_blocks(obj.aws_bucket, obj.key, begin, [length], deadline)[0]

        def fetch_arriving(arrived: Arrived) -> Buffer:
            return self.store.get_blocks(obj.aws_bucket, obj.key, begin, [length], deadline, arrived)[0]

        # A thread joining another's fetch waits until our deadline plus one attempt, at most.
        wait = None if deadline is None else max(0.1, deadline - time.monotonic()) + self.store.retry.attempt_timeout
        # The store returns exactly the bytes asked for, and the cache checks the length again.
        # A read of part of a block is answered once its bytes are in (the rest still arriving).
        partial = stop - start < length
        return self.cache.read(
            self.block_key(obj, index), length, fetch, wait, start, stop, fetch_arriving if partial else None
        )

    def _block_length(self, obj: ObjectRef, index: int) -> int:
        return min(obj.size, (index + 1) * self.block_size) - index * self.block_size

    def num_blocks(self, obj: ObjectRef) -> int:
        return -(-obj.size // self.block_size)  # 0 for an empty object: nothing to fetch

    # -- work ahead of demand -----------------------------------------------------------------

    def _read_ahead(self, obj: ObjectRef, offset: int, end: int, last_block: int, state: ReadState) -> None:
        with state.lock:
            # The kernel's own readahead arrives on several threads, out of order: a reader's
            # synchronous read and the readahead beside it are taken in either order, a few
            # blocks apart. A read starting within a few blocks of where the last ended counts.
            sequential = abs(offset - state.next_offset) <= SEQUENTIAL_SLACK_BLOCKS * self.block_size
            state.next_offset = max(end, state.next_offset) if sequential else end
            first, last, at_random = 1, 0, False
            if sequential:
                first_whole = -(-state.run_start // self.block_size)  # the run's first block read from its start
                if last_block > state.reached and last_block > first_whole:  # a whole block consumed, and more
                    state.window = min(max(1, state.window * 2), self.prefetch.max_window)
                state.reached = max(state.reached, last_block)
                first, last = self._window_step(obj, last_block, state)
            else:
                state.window, state.run_start, state.reached, state.ahead_until = 0, offset, last_block, last_block
                state.jumps += 1
                at_random = state.jumps == self.prefetch.random_after
        if at_random:
            self._fetch_whole(obj)
        elif first <= last:
            # A stream's blocks go to disk if the writer keeps up: a reader is never held back
            # by the one disk-writer thread (a series, or an object fetched whole, still waits).
            self._schedule(obj, first, last, READAHEAD, STREAM)

    def _window_step(self, obj: ObjectRef, last_block: int, state: ReadState) -> tuple[int, int]:
        """The blocks to queue ahead of a sequential read (none while half the window is left).

        The window is topped up in large steps once half of it is consumed, so each step is a
        few big GETs rather than one block per read."""
        if state.ahead_until - last_block > state.window // 2:
            return 1, 0
        first = max(state.ahead_until, last_block) + 1
        last = min(last_block + state.window, self.num_blocks(obj) - 1)
        state.ahead_until = max(state.ahead_until, last)
        return first, last

    def _fetch_whole(self, obj: ObjectRef) -> None:
        """An object read at random: queue all of it, once per mount, if the caches can hold it.

        Random reads are latency-bound, one block a round trip: 2,000 tile reads in a 1 GB slide
        file cost ~900 sequential GETs. Fetched whole in parallel runs, the object arrives at the
        speed of a download and every later read is a cache hit. A header read and a frame or two
        never get here (``random_after`` jumps first); objects too large for the caches never do.
        """
        capacity = self.cache.disk.capacity if self.cache.disk is not None else self.cache.max_bytes
        if obj.size <= self.block_size or obj.size > min(self.prefetch.max_random_object_bytes, capacity // 2):
            return
        with self._series_lock:
            if obj.key in self._objects_scheduled:
                return
            self._objects_scheduled[obj.key] = True
        log.debug("%s is read at random: fetching it whole (%d bytes)", obj.key, obj.size)
        # Held in memory, it need not wait for the disk writer; larger, later reads need it on disk.
        write = WHOLE_BEHIND if obj.size <= self.cache.max_bytes // 2 else WHOLE
        self._schedule(obj, 0, self.num_blocks(obj) - 1, READAHEAD, write)

    def _schedule(self, obj: ObjectRef, first: int, last: int, priority: int, write: DiskWrite = KEEP) -> None:
        """Queue blocks ``first..last`` of ``obj``, in runs of up to ``coalesce`` blocks a GET:
        per-request costs (a round trip, a response to parse) dominate small blocks."""
        run: list[int] = []
        for index in range(first, last + 1):
            key = self.block_key(obj, index)
            with self._queued_lock:
                wanted = key not in self._queued and not self.cache.contains(key) and not self.cache.in_flight(key)
                if wanted:
                    self._queued.add(key)
            if wanted:
                run.append(index)
            if run and (not wanted or len(run) == self.prefetch.coalesce or index == last):
                self._submit_run(obj, run, priority, write)
                run = []

    def _submit_run(self, obj: ObjectRef, indexes: list[int], priority: int, write: DiskWrite) -> None:
        """Queue one background task for a run of blocks; the cache claims, fetches (one GET per
        contiguous stretch it does not already hold) and settles or releases every block.
        ``write``: how the blocks go to disk (:class:`~idcfs.blocks.tiers.DiskWrite`)."""
        blocks = [(self.block_key(obj, i), self._block_length(obj, i)) for i in indexes]
        start = indexes[0] * self.block_size
        stop = min(obj.size, (indexes[-1] + 1) * self.block_size)

        def fetch(first: int, last: int) -> list[Buffer]:
            begin = indexes[first] * self.block_size
            return self.store.get_blocks(obj.aws_bucket, obj.key, begin, [n for _, n in blocks[first : last + 1]])

        def task() -> None:
            try:
                self.cache.fill(blocks, fetch, write)
            finally:
                with self._queued_lock:
                    self._queued.difference_update(key for key, _ in blocks)
                if self.cache.behind:  # a failed run may have left some too
                    self._write_behind_soon()

        self.background.submit(priority, stop - start, task)

    def _write_behind_soon(self) -> None:
        """Queue, once at a time, the writing to disk of blocks fetched faster than the disk
        writer took them (after every fetch queued before it)."""
        with self._series_lock:
            if self._writing_behind:
                return
            self._writing_behind = True

        def task() -> None:
            try:
                while True:
                    self.cache.write_behind()
                    with self._series_lock:  # none left: the next fetch that leaves some queues a task
                        if not self.cache.behind:
                            self._writing_behind = False
                            return
            except BaseException:
                with self._series_lock:
                    self._writing_behind = False
                raise

        self.background.submit(BEHIND, 0, task)

    def wants_series(self, series_uuid: str) -> bool:
        """Whether opening an instance of this series should queue the series (cheap: called on
        every first read, before any per-object work)."""
        if self.prefetch.mode != "series":
            return False
        with self._series_lock:
            return series_uuid not in self._series_scheduled

    def prefetch_series(self, series_uuid: str, objects: Callable[[], list[ObjectRef]], opened: ObjectRef) -> bool:
        """Queue a series' objects, from the opened one on (wrapping), once per mount.

        ``objects`` is called only when the series is queued: planning a series is done once per
        series, never per opened file. Returns whether the series was queued (not when off, too
        large, or queued before).
        """
        if self.prefetch.mode != "series":
            return False
        with self._series_lock:
            if series_uuid in self._series_scheduled:
                return False
            self._series_scheduled[series_uuid] = True
        refs = objects()
        total = sum(o.size for o in refs)
        if total > self.prefetch.max_series_bytes:
            log.debug("series %s (%d bytes) is larger than the prefetch limit; not prefetched", series_uuid, total)
            return False
        start = next((k for k, o in enumerate(refs) if o.key == opened.key), 0)
        for obj in refs[start:] + refs[:start]:
            self._schedule(obj, 0, self.num_blocks(obj) - 1, SERIES)
        return True

    # -- what the tree asks of the reader ---------------------------------------------------------

    @property
    def prefetching(self) -> bool:
        """Whether work ahead of demand is wanted at all (``--prefetch off``: never)."""
        return self.prefetch.mode != "off"

    def run_ahead(self, task: Callable[[], None]) -> None:
        """Run ``task`` (a listing wanted soon) in the background, behind readahead."""
        self.background.submit(SERIES, 0, task)

    def stats(self) -> dict[str, Any]:
        """The memory and disk tiers' and the prefetcher's statistics."""
        cache = self.cache
        cached, disk = cache.counters.snapshot(), cache.disk
        background = self.background
        return {
            "cache": {
                "memory": {
                    "hits": cached["memory_hits"],
                    "misses": cached["memory_misses"],
                    "bytes": cache.bytes_used,
                    "capacity": cache.max_bytes,
                    "buffers_reused": RECYCLED.reused,
                },
                "disk": {
                    "hits": cached["disk_hits"],
                    "misses": cached["disk_misses"],
                    "bytes": disk.bytes_used if disk is not None else 0,
                    "capacity": disk.capacity if disk is not None else 0,
                    "paused": bool(getattr(disk, "paused", False)),
                },
            },
            "prefetch": {
                "mode": self.prefetch.mode,
                "useful_bytes": cached["prefetch_useful_bytes"],
                "wasted_bytes": cached["prefetch_wasted_bytes"],
                "unread_bytes": cache.unread_prefetched_bytes,
                "completed": background.completed,
                "failed": background.failed,
            },
        }

    def flush(self, timeout: float) -> bool:
        """Wait, ``timeout`` seconds at most, until the blocks queued for the disk are written."""
        return self.cache.disk.flush(timeout) if self.cache.disk is not None else True

    def close(self) -> None:
        self.background.close()
        self.cache.close()
        if self.cache.disk is not None:
            self.cache.disk.close()
