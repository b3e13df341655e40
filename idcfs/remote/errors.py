"""What a request to a store can end in, for good (after retries): the kinds callers tell apart."""

from __future__ import annotations


class StoreError(OSError):
    """A request that failed for good (after retries, or not retryable)."""


class NotFoundError(StoreError):
    """The object or prefix does not exist."""


class OfflineError(StoreError):
    """The store is unreachable: failed at once, without a request (see :class:`Breaker`)."""


class ShortRead(Exception):
    """A response body shorter (or longer) than the range asked for."""
