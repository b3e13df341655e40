"""The HTTP side both clouds share (see :class:`HttpStore`); :mod:`idcfs.remote.s3` and
:mod:`idcfs.remote.gcs` say how each names buckets, objects and listing pages."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from idcfs.remote.buckets import bucket_for, object_url
from idcfs.remote.http import REDIRECT_STATUSES, Allocate, Arrived, Buffer, Http, Response, error_for
from idcfs.remote.objects import ObjectInfo, ObjectTable, ObjectTableBuilder
from idcfs.remote.retry import (
    FATAL,
    UNREACHABLE,
    Breaker,
    NotFoundError,
    RetryPolicy,
    ShortRead,
    classify,
    describe,
    with_retries,
)
from idcfs.util.counters import Counters, LatencyWindow

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Objects per listing page (both APIs' maximum for S3, a sane one for GCS).
PAGE_SIZE = 1000
#: A probe of the store must answer quickly: it decides whether the mount starts offline.
PROBE_TIMEOUT = 3.0


class HttpStore:
    """What S3 and GCS share: paged listing with one deadline, ranged GETs read into buffers and
    resumed where a body was cut, retries, the breaker. A subclass says how a cloud names
    things: its URLs, one listing page, where a probe goes, how a redirect is followed.

    Nothing here starts a thread until a request needs one (the breaker's probe), so a store
    made before the FUSE daemon forks works in the daemon.
    """

    source = ""

    def __init__(
        self, endpoint_url: str | None = None, retry: RetryPolicy | None = None, allocate: Allocate = bytearray
    ) -> None:
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.retry = retry or RetryPolicy()
        self.allocate = allocate
        self.http = Http(allocate=allocate)
        self.breaker = Breaker(self.probe)
        #: ``GET``/``LIST`` requests sent, ``bytes_fetched``, ``retries``, ``errors`` (failed for
        #: good), ``not_found``; and how long successful GETs took.
        self.counters = Counters("GET", "LIST", "bytes_fetched", "retries", "errors", "not_found")
        self.get_latency = LatencyWindow()

    # -- the two operations -------------------------------------------------------------------

    def list_series(self, aws_bucket: str, series_uuid: str) -> ObjectTable:
        """Every object under ``<bucket>/<series_uuid>/``, sorted by name; empty when there is none.

        The pages share one deadline, and a failed page is retried from its own token: a
        92-page listing neither overruns the deadline 92 times nor starts again from page 1.
        """
        bucket = bucket_for(self.source, aws_bucket)
        prefix = f"{series_uuid}/"
        what = f"LIST {object_url(self.source, aws_bucket, prefix)}"
        deadline = time.monotonic() + self.retry.deadline
        objects = ObjectTableBuilder()  # each page goes into its buffers and is gone
        token: str | None = None
        while True:
            try:
                items, token = self._with_retries(what, functools.partial(self._page, bucket, prefix, token), deadline)
            except NotFoundError:
                return ObjectTableBuilder().build()  # a bucket or prefix that is not there holds no objects
            objects.extend(items)
            del items
            if not token:
                return objects.build()

    def get_blocks(
        self,
        aws_bucket: str,
        key: str,
        start: int,
        sizes: list[int],
        deadline: float | None = None,
        arrived: Arrived | None = None,
    ) -> list[Buffer]:
        """The consecutive ranges of ``sizes`` bytes from ``start``, one new buffer each, read
        straight off the connection (see :meth:`Http.request`'s ``parts``); exactly those sizes
        or an error. The buffers are the cache's blocks: nothing copies them again.
        ``arrived``: told the first range's bytes as they come in (a demand read answered before
        its block is whole), from whichever attempt brings them."""
        end = start + sum(sizes)
        bucket = bucket_for(self.source, aws_bucket)
        what = f"GET {object_url(self.source, aws_bucket, key)} bytes {start}-{end - 1}"
        url = self.object_http_url(bucket, key)
        # Bytes [start, start + len(received)) verified by earlier attempts: a body cut short
        # (a reset, a trickle past the attempt's time) is resumed, not fetched again from start.
        received = bytearray()

        def attempt(timeout: float) -> list[Buffer]:
            first = start + len(received)
            if first == end:  # the last attempt's body was whole when its time ran out
                return _split(received, sizes, self.allocate)
            self.counters.add("GET")
            started = time.monotonic()
            # The first attempt reads into the parts; a resumed one is rare: joined, then split.
            parts = None if received else sizes
            try:
                response = self._request(url, timeout, {"Range": f"bytes={first}-{end - 1}"}, parts, arrived)
            except Exception as error:
                partial = getattr(error, "partial", b"")
                if partial and getattr(error, "partial_start", None) == first:
                    received.extend(partial[: end - first])
                    self.counters.add("bytes_fetched", len(partial))
                    if arrived is not None:  # a copy: received grows, and a reader may be copying
                        arrived(bytearray(received[: sizes[0]]), min(len(received), sizes[0]))
                raise
            if response.status not in (200, 206):
                raise error_for(response)
            if response.parts is not None:
                self.counters.add("bytes_fetched", end - first)
                self.get_latency.observe(time.monotonic() - started)
                return response.parts
            self.counters.add("bytes_fetched", len(response.data))
            if len(response.data) != end - first:
                raise ShortRead(f"got {len(response.data)} bytes, expected {end - first}")
            self.get_latency.observe(time.monotonic() - started)
            return _split(received + response.data, sizes, self.allocate)

        return self._with_retries(what, attempt, deadline)

    def probe(self) -> str | None:
        """None when the store can be reached, else why not.

        Reached means a connection was made: any HTTP status, and even a reset or a garbled
        answer (a flaky store is retried, not declared offline). A certificate that does not
        verify is reported too: nothing would work, and the user must hear why.
        """
        url = self._probe_url()
        try:
            self.http.request("HEAD", url, PROBE_TIMEOUT)
        except Exception as error:  # noqa: BLE001 - classified just below
            if classify(error) in (UNREACHABLE, FATAL):
                return describe(error)
        return None

    def _list_request(self, url: str, timeout: float) -> bytes:
        self.counters.add("LIST")
        response = self._request(url, timeout)
        if response.status != 200:
            raise error_for(response)
        return response.data

    # -- what each cloud says its own way -------------------------------------------------------

    def object_http_url(self, bucket: str, key: str) -> str:
        """The anonymous HTTP(S) URL of an object, for a plain ranged GET."""
        raise NotImplementedError

    def _page(self, bucket: str, prefix: str, token: str | None, timeout: float) -> tuple[list[ObjectInfo], str | None]:
        """One listing page: its objects (names relative to ``prefix``) and the next token."""
        raise NotImplementedError

    def _probe_url(self) -> str:
        raise NotImplementedError

    def _redirect_target(self, url: str, response: Response) -> str | None:
        """Where to send a request again after a redirect with no ``Location`` (None: nowhere)."""
        return None

    def _request(
        self,
        url: str,
        timeout: float,
        headers: dict[str, str] | None = None,
        parts: list[int] | None = None,
        arrived: Arrived | None = None,
    ) -> Response:
        """GET ``url``, following an S3 region redirect (a 301 with no ``Location``: the right
        endpoint is in the body's ``<Endpoint>`` or the ``x-amz-bucket-region`` header)."""
        response = self.http.request("GET", url, timeout, headers, parts, arrived)
        if response.status in REDIRECT_STATUSES:
            moved = self._redirect_target(url, response)
            if moved:
                log.debug("redirect %s -> %s", url, moved)
                response = self.http.request("GET", moved, timeout, headers, parts, arrived)
        return response

    def _with_retries(self, what: str, attempt: Callable[[float], T], deadline: float | None = None) -> T:
        def failed(_reason: str) -> None:
            self.counters.add("errors")

        try:
            return with_retries(
                what,
                attempt,
                self.retry,
                deadline,
                self.breaker,
                on_retry=lambda: self.counters.add("retries"),
                on_failure=failed,
            )
        except NotFoundError:
            self.counters.add("not_found")
            raise

    def close(self) -> None:
        self.breaker.close()


def _split(data: bytes | bytearray, sizes: list[int], allocate: Allocate) -> list[Buffer]:
    """``data`` cut into buffers of ``sizes`` (the rare path: a resumed or unexpected body)."""
    out, offset = [], 0
    for size in sizes:
        block = allocate(size)
        block[:] = data[offset : offset + size]
        out.append(block)
        offset += size
    return out
