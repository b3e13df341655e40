"""The listing cache's folder, used from one thread of its own.

diskcache opens an SQLite connection in each thread that touches it: a few milliseconds and
three descriptors, paid by every FUSE thread, prefetch worker and share worker on its first
listing, on the way to that listing's LIST (a fresh mount's first lookup of a file waited for two
of them, and for the write of the listing it fetched). Here one thread holds the one connection,
opened with the cache: a read is handed to it and taken before any write waiting; a write is
queued behind the answer and done as soon as the thread is free (before the series' blocks are
on disk, in practice: another process sharing the folder finds the listing with them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Writes waiting at most; past that one is dropped (fetched again when next wanted, in another
#: process or after a remount).
WRITES_QUEUED = 1024
#: Seconds a write that failed (a full disk, a removed folder) holds off the next ones.
PAUSE_AFTER_FAILURE = 60.0


class ListingDisk:
    """Listings stored by key in ``directory`` (a diskcache folder); raises if it is unusable."""

    def __init__(self, directory: Path) -> None:
        import diskcache

        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        #: The diskcache itself (tests write to it directly, from their own thread).
        self.cache: Any = diskcache.Cache(str(directory), size_limit=2**40, eviction_policy="none")
        self._reads: deque[tuple[str, Future[bytes | None]]] = deque()
        self._writes: deque[tuple[str, bytes]] = deque()
        self._writing = 0  # writes taken from the queue, not yet done
        self._paused_until = 0.0
        self._closed = False
        self._condition = threading.Condition()
        threading.Thread(target=self._run, name="idcfs-listing-disk", daemon=True).start()

    def get(self, key: str, timeout: float) -> bytes | None:
        """The stored bytes, or None: absent, unreadable, or not read within ``timeout`` (a
        stalled disk: the network answers instead)."""
        answer: Future[bytes | None] = Future()
        with self._condition:
            if self._closed:
                return None
            self._reads.append((key, answer))
            self._condition.notify_all()
        try:
            return answer.result(timeout)
        except FutureTimeout:
            answer.cancel()  # not read at all if the thread has not come to it
            log.warning("the listing cache did not answer within %.0f s; asking the store", timeout)
            return None

    def put(self, key: str, value: bytes) -> None:
        """Queue a write (dropped when the queue is full, or while writes are failing)."""
        with self._condition:
            if self._closed or len(self._writes) >= WRITES_QUEUED or time.monotonic() < self._paused_until:
                return
            self._writes.append((key, value))
            self._condition.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait, ``timeout`` seconds at most, until the queued writes are done."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._writes or self._writing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def close(self, timeout: float) -> bool:
        """Write what is queued (within ``timeout``), then stop the thread."""
        flushed = self.flush(timeout)
        with self._condition:
            self._closed = True
            self._writes.clear()
            self._condition.notify_all()
        return flushed

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # a read or a write says what is wrong
            self.cache.get("")  # this thread's connection, opened now rather than on a lookup
        while True:
            with self._condition:
                while not (self._reads or self._writes or self._closed):
                    self._condition.wait(1.0)  # idle: look again; nothing here waits unbounded
                if self._reads:
                    key, answer = self._reads.popleft()
                    write = None
                elif self._writes:
                    key, write = self._writes.popleft()
                    self._writing += 1
                else:
                    return  # closed, nothing left
            if write is None:
                if answer.set_running_or_notify_cancel():  # False: its asker has gone on without it
                    answer.set_result(self._read(key))
            else:
                self._write(key, write)

    def _read(self, key: str) -> bytes | None:
        try:
            stored = self.cache.get(key)
        except Exception:  # noqa: BLE001 - a damaged cache is a miss
            return None
        return stored if isinstance(stored, bytes) else None

    def _write(self, key: str, value: bytes) -> None:
        try:
            self.cache.set(key, value)
        except Exception as error:  # noqa: BLE001
            log.warning("listing cache cannot be written (%s); trying again in a minute", error)
            with self._condition:
                self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
                self._writes.clear()  # queued before the failure: they would fail the same way
        finally:
            with self._condition:
                self._writing -= 1
                self._condition.notify_all()
