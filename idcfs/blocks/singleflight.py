"""One fetch per key however many threads ask for it at once, with a bounded wait for followers.

Used for blocks (:mod:`idcfs.blocks.cache`) and for series listings (:mod:`idcfs.vfs.listings`):
a series opened by a viewer's eight threads is listed once, a block read by two readers is
fetched once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from idcfs.remote.retry import StoreError

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
