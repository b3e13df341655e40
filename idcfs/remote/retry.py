"""When a failed request is tried again, and for how long: one policy for every request.

Decisions are made on exception *types* of the libraries that raise them (urllib3, ssl, the
standard library), never on class names or message text: a DNS failure, a refused or reset
connection, a truncated body, a malformed status line, a TLS EOF, a timeout, a 5xx, 408 and 429
are transient; a 4xx, a certificate that does not verify and a bug are not. Every operation has
one deadline (a listing of 92 pages included); ``Retry-After`` is honoured within it.
"""

from __future__ import annotations

import http.client
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from idcfs.remote.errors import NotFoundError, OfflineError, ShortRead, StoreError
from idcfs.remote.http import HttpStatusError
from idcfs.remote.policy import RetryPolicy

__all__ = ["NotFoundError", "OfflineError", "RetryPolicy", "ShortRead", "StoreError", "classify", "with_retries"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What a failure means: retry it, give up, or also tell the circuit breaker the store is gone.
NOT_FOUND, TRANSIENT, UNREACHABLE, FATAL = "not found", "transient", "unreachable", "fatal"


def _chain(error: BaseException) -> list[BaseException]:
    """The error, its causes and their arguments (urllib3 wraps the socket error it got)."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend([current.__cause__, current.__context__])  # type: ignore[list-item]
        todo.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
    return seen


def classify(error: BaseException) -> str:
    """:data:`NOT_FOUND`, :data:`UNREACHABLE`, :data:`TRANSIENT` or :data:`FATAL`."""
    import urllib3.exceptions as u3

    chain = _chain(error)
    for cause in chain:
        if isinstance(cause, OfflineError):
            return UNREACHABLE
        if isinstance(cause, HttpStatusError):
            if cause.status == 404:
                return NOT_FOUND
            return TRANSIENT if cause.status >= 500 or cause.status in (408, 429) else FATAL
        if isinstance(cause, FileNotFoundError):
            return NOT_FOUND
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in chain):
        return FATAL  # a wrong CA bundle does not heal by itself
    for cause in chain:
        # The connection was never made: DNS (NameResolutionError is a NewConnectionError),
        # refused, unreachable, connect timeout, or the proxy itself out of reach.
        if isinstance(cause, (u3.NewConnectionError, u3.ConnectTimeoutError, u3.ProxyError)):
            return UNREACHABLE
    for cause in chain:
        if isinstance(
            cause,
            (
                ShortRead,
                u3.ProtocolError,  # reset, aborted, IncompleteRead, BadStatusLine
                u3.ReadTimeoutError,
                u3.SSLError,  # TLS EOF mid-stream (a certificate error was excluded above)
                u3.IncompleteRead,
                u3.DecodeError,
                http.client.HTTPException,  # BadStatusLine, RemoteDisconnected, IncompleteRead
                ssl.SSLEOFError,
                ssl.SSLZeroReturnError,
                ssl.SSLError,  # any other TLS failure mid-body, read from the socket itself
                ConnectionError,  # reset, refused, aborted, broken pipe
                TimeoutError,  # socket.timeout
            ),
        ):
            return TRANSIENT
    return FATAL


class Breaker:
    """A circuit breaker for a store that cannot be reached at all.

    After ``threshold`` requests in a row that could not even connect, the store counts as
    offline: new operations fail at once (:class:`OfflineError`, EIO at the FUSE level) instead
    of each retrying until its deadline, while cached data keeps being served. A probe
    (``probe()`` -> None when reachable, else a reason) runs in the background every few seconds
    and closes the breaker when the store answers again. Nothing is remembered past the outage.
    """

    def __init__(self, probe: Callable[[], str | None], threshold: int = 3, interval: float = 2.0) -> None:
        self._probe = probe
        self._threshold = threshold
        self._interval = interval
        self._lock = threading.Lock()
        self._failures = 0
        self._offline_since: float | None = None
        self._reason = ""
        self._prober: threading.Thread | None = None
        self._closed = threading.Event()

    @property
    def offline(self) -> bool:
        return self._offline_since is not None

    def state(self) -> dict[str, object]:
        with self._lock:
            if self._offline_since is None:
                return {"state": "online"}
            return {
                "state": "offline",
                "offline_seconds": round(time.monotonic() - self._offline_since, 1),
                "reason": self._reason,
            }

    def check(self, what: str) -> None:
        """Raise :class:`OfflineError` while the store is offline."""
        if self._offline_since is not None:
            raise OfflineError(f"{what}: store unreachable ({self._reason}); serving cached data only")

    def succeeded(self) -> None:
        if self._failures:
            with self._lock:
                self._failures = 0

    def failed(self, reason: str) -> None:
        """A request could not connect."""
        with self._lock:
            self._failures += 1
            if self._failures >= self._threshold and self._offline_since is None:
                self._trip(reason)

    def trip(self, reason: str) -> None:
        """Count the store as offline now (the mount's reachability probe failed)."""
        with self._lock:
            if self._offline_since is None:
                self._trip(reason)

    def _trip(self, reason: str) -> None:  # with self._lock held
        self._offline_since = time.monotonic()
        self._reason = reason
        log.warning("store unreachable (%s): uncached reads fail at once until it answers again", reason)
        if self._prober is None or not self._prober.is_alive():
            self._prober = threading.Thread(target=self._probe_loop, name="idcfs-probe", daemon=True)
            self._prober.start()

    def _probe_loop(self) -> None:
        interval = self._interval
        while not self._closed.wait(interval):
            reason = self._probe()
            with self._lock:
                if reason is None:
                    seconds = time.monotonic() - (self._offline_since or time.monotonic())
                    self._offline_since, self._failures = None, 0
                    log.warning("store reachable again after %.0fs", seconds)
                    return
                self._reason = reason
            interval = min(interval * 1.5, 30.0)

    def close(self) -> None:
        self._closed.set()


def with_retries(
    what: str,
    attempt: Callable[[float], T],
    policy: RetryPolicy,
    deadline: float | None = None,
    breaker: Breaker | None = None,
    on_retry: Callable[[], None] | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> T:
    """``attempt(timeout)`` until it succeeds, fails for good, or the deadline passes.

    ``deadline`` (a ``time.monotonic()`` value) lets several calls share one (the pages of a
    listing). Each attempt's timeout is cut to the time left. A failure for good is logged once,
    with the object, the error and the retries, and raised as :class:`StoreError`.
    """
    deadline = deadline if deadline is not None else time.monotonic() + policy.deadline
    backoff = policy.first_backoff
    tries = 0
    while True:
        if breaker is not None:
            breaker.check(what)
        tries += 1
        try:
            result = attempt(max(0.1, min(policy.attempt_timeout, deadline - time.monotonic())))
        except Exception as error:  # noqa: BLE001 - classified just below
            kind = classify(error)
            if kind == NOT_FOUND:
                raise NotFoundError(f"{what}: not found") from error
            if breaker is not None:
                if kind == UNREACHABLE and not isinstance(error, OfflineError):
                    breaker.failed(describe(error))
                elif kind == TRANSIENT:
                    breaker.succeeded()  # it answered, however badly
            wait = random.uniform(0, backoff)
            hinted = next((c.retry_after for c in _chain(error) if isinstance(c, HttpStatusError)), None)
            if hinted is not None:
                wait = max(wait, hinted)
            offline = breaker is not None and breaker.offline
            if kind == FATAL or offline or time.monotonic() + wait >= deadline:
                reason = (
                    "not retryable"
                    if kind == FATAL
                    else "store offline"
                    if offline
                    else f"deadline {policy.deadline:g}s reached"
                )
                if on_failure is not None:
                    on_failure(reason)
                log.error("%s failed after %d retries (%s): %s", what, tries - 1, reason, describe(error))
                if offline:
                    raise OfflineError(f"{what} failed: store unreachable ({describe(error)})") from error
                raise StoreError(f"{what} failed ({reason}): {describe(error)}") from error
            if on_retry is not None:
                on_retry()
            log.debug("%s: attempt %d failed (%s); retrying in %.2fs", what, tries, describe(error), wait)
            time.sleep(wait)
            backoff = min(backoff * 2, policy.max_backoff)
        else:
            if breaker is not None:
                breaker.succeeded()
            return result


def describe(error: BaseException) -> str:
    """One line, short: the log line a user reads."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:300] + "..."
