"""Where bytes live: the IDC buckets on S3 or GCS, anonymous, with retries and a deadline.

Everything above sees :class:`Store`: list one series prefix, get consecutive byte ranges of
one object. :func:`open_store` gives the implementation of a source (:mod:`idcfs.remote.s3`,
:mod:`idcfs.remote.gcs`); both are plain anonymous HTTP through one stack
(:mod:`idcfs.remote.http_store`), and :mod:`idcfs.remote.retry` decides what is tried again.
Requests are never signed: no user credential is ever sent to a public bucket.
"""

from __future__ import annotations

from typing import Protocol

from idcfs.remote.buckets import SOURCES, bucket_for, object_url
from idcfs.remote.http import Allocate, Arrived, Buffer
from idcfs.remote.objects import ObjectTable
from idcfs.remote.policy import RetryPolicy
from idcfs.remote.retry import Breaker
from idcfs.util.counters import Counters, LatencyWindow

__all__ = ["SOURCES", "Store", "bucket_for", "object_url", "open_store"]


class Store(Protocol):
    """Anonymous reads from one cloud. Buckets are named as the index names them (AWS's);
    each implementation maps them to its own."""

    source: str
    endpoint_url: str | None
    retry: RetryPolicy
    breaker: Breaker
    #: ``GET``/``LIST`` requests sent, ``bytes_fetched``, ``retries``, ``errors``, ``not_found``.
    counters: Counters
    get_latency: LatencyWindow

    def list_series(self, aws_bucket: str, series_uuid: str) -> ObjectTable:
        """Every object under ``<bucket>/<series_uuid>/``, sorted by name; empty when none."""
        ...

    def get_blocks(
        self,
        aws_bucket: str,
        key: str,
        start: int,
        sizes: list[int],
        deadline: float | None = None,
        arrived: Arrived | None = None,
    ) -> list[Buffer]:
        """The consecutive ranges of ``sizes`` bytes from ``start``: exactly those or an error.
        ``arrived``: told the first range's bytes as they come in (see :data:`Arrived`)."""
        ...

    def probe(self) -> str | None:
        """None when the store can be reached, else why not."""
        ...

    def close(self) -> None: ...


def open_store(
    source: str = "aws",
    endpoint_url: str | None = None,
    retry: RetryPolicy | None = None,
    allocate: Allocate = bytearray,
) -> Store:
    """The store of ``source`` (``aws`` or ``gcs``), at ``endpoint_url`` if given (a test server,
    a mirror), else the cloud's own. ``allocate`` makes the buffers bodies are read into."""
    if source == "aws":
        from idcfs.remote.s3 import S3Store

        return S3Store(endpoint_url, retry, allocate)
    if source == "gcs":
        from idcfs.remote.gcs import GcsStore

        return GcsStore(endpoint_url, retry, allocate)
    raise ValueError(f"unknown source {source!r} (expected one of {', '.join(SOURCES)})")
