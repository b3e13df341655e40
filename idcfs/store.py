"""Where bytes live: the IDC buckets on S3 or GCS, anonymous, with retries and a deadline.

Everything else sees :class:`Store`: list one series prefix, get one byte range. Both are plain
anonymous HTTP through :mod:`idcfs.transport` (one stack for proxies, CAs and timeouts, on S3 and
on GCS; the S3 ListObjectsV2 and GCS JSON listing APIs are each one GET with a page token), and
:mod:`idcfs.retry` decides what is tried again. Requests are never signed: no user credential is
ever sent to a public bucket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from typing import TypeVar

from idcfs.objects import ObjectInfo, ObjectTable, ObjectTableBuilder
from idcfs.retry import (
    FATAL,
    UNREACHABLE,
    Breaker,
    NotFoundError,
    OfflineError,
    RetryPolicy,
    ShortRead,
    StoreError,
    classify,
    describe,
    with_retries,
)
from idcfs.stats import Counters, LatencyWindow
from idcfs.transport import REDIRECT_STATUSES, Buffer, Http, Response, error_for, new_buffer

__all__ = [
    "AWS_TO_GCS_BUCKET",
    "SOURCES",
    "NotFoundError",
    "ObjectInfo",
    "ObjectTable",
    "OfflineError",
    "RetryPolicy",
    "Store",
    "StoreError",
    "bucket_for",
    "object_url",
]

log = logging.getLogger(__name__)

#: AWS bucket (the index's ``aws_bucket``) -> the GCS bucket holding the same objects.
AWS_TO_GCS_BUCKET = {
    "idc-open-data": "idc-open-data",
    "idc-open-data-two": "idc-open-idc1",
    "idc-open-data-cr": "idc-open-cr",
}

SOURCES = ("aws", "gcs")

T = TypeVar("T")
#: Objects per listing page (both APIs' maximum for S3, a sane one for GCS).
PAGE_SIZE = 1000
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: A probe of the store must answer quickly: it decides whether the mount starts offline.
PROBE_TIMEOUT = 3.0


def bucket_for(source: str, aws_bucket: str) -> str:
    """The bucket holding a series on ``source``, given its ``aws_bucket`` from the index."""
    if source == "aws":
        return aws_bucket
    if source == "gcs":
        try:
            return AWS_TO_GCS_BUCKET[aws_bucket]
        except KeyError:
            raise StoreError(f"no GCS mirror known for AWS bucket {aws_bucket!r}") from None
    raise ValueError(f"unknown source {source!r} (expected one of {', '.join(SOURCES)})")


def object_url(source: str, aws_bucket: str, key: str) -> str:
    """The ``s3://`` or ``gs://`` URL of an object or prefix (for xattrs and logs)."""
    scheme = "s3" if source == "aws" else "gs"
    return f"{scheme}://{bucket_for(source, aws_bucket)}/{key}"


class Store:
    """Anonymous reads from one cloud: LIST a series prefix, GET a byte range.

    Nothing here starts a thread until a request needs one (the breaker's probe), so a store
    made before the FUSE daemon forks works in the daemon.
    """

    def __init__(self, source: str = "aws", endpoint_url: str | None = None, retry: RetryPolicy | None = None) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (expected one of {', '.join(SOURCES)})")
        self.source = source
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.retry = retry or RetryPolicy()
        self.http = Http()
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
        page = self._s3_page if self.source == "aws" else self._gcs_page
        objects = ObjectTableBuilder()  # each page goes into its buffers and is gone
        token: str | None = None
        while True:
            try:
                items, token = self._with_retries(
                    what, lambda timeout, token=token: page(bucket, prefix, token, timeout), deadline
                )
            except NotFoundError:
                return ObjectTableBuilder().build()  # a bucket or prefix that is not there holds no objects
            objects.extend(items)
            del items
            if not token:
                return objects.build()

    def get_range(self, aws_bucket: str, key: str, start: int, end: int, deadline: float | None = None) -> bytes:
        """Bytes ``[start, end)`` of an object; exactly ``end - start`` of them or an error.

        ``deadline`` (a ``time.monotonic()`` value) is the caller's, when one read needs several
        ranges; else the retry policy's deadline from now."""
        return b"".join(self.get_blocks(aws_bucket, key, start, [end - start], deadline))

    def get_blocks(
        self, aws_bucket: str, key: str, start: int, sizes: list[int], deadline: float | None = None
    ) -> list[Buffer]:
        """The consecutive ranges of ``sizes`` bytes from ``start``, one new buffer each, read
        straight off the connection (see :meth:`Http.request`'s ``parts``); exactly those sizes
        or an error. The buffers are the cache's blocks: nothing copies them again."""
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
                return _split(received, sizes)
            self.counters.add("GET")
            started = time.monotonic()
            # The first attempt reads into the parts; a resumed one is rare: joined, then split.
            parts = None if received else sizes
            try:
                response = self._request(url, timeout, {"Range": f"bytes={first}-{end - 1}"}, parts)
            except Exception as error:
                partial = getattr(error, "partial", b"")
                if partial and getattr(error, "partial_start", None) == first:
                    received.extend(partial[: end - first])
                    self.counters.add("bytes_fetched", len(partial))
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
            return _split(received + response.data, sizes)

        return self._with_retries(what, attempt, deadline)

    def probe(self) -> str | None:
        """None when the store can be reached, else why not.

        Reached means a connection was made: any HTTP status, and even a reset or a garbled
        answer (a flaky store is retried, not declared offline). A certificate that does not
        verify is reported too: nothing would work, and the user must hear why.
        """
        url = self._base_url("idc-open-data") + ("/" if self.source == "aws" else "/storage/v1/b/idc-open-data")
        try:
            self.http.request("HEAD", url, PROBE_TIMEOUT)
        except Exception as error:  # noqa: BLE001 - classified just below
            if classify(error) in (UNREACHABLE, FATAL):
                return describe(error)
        return None

    # -- URLs ---------------------------------------------------------------------------------

    def _base_url(self, bucket: str) -> str:
        if self.source == "aws":
            return f"{self.endpoint_url}/{bucket}" if self.endpoint_url else f"https://{bucket}.s3.amazonaws.com"
        return self.endpoint_url or "https://storage.googleapis.com"

    def object_http_url(self, bucket: str, key: str) -> str:
        """The anonymous HTTP(S) URL of an object, for a plain ranged GET."""
        if self.source == "aws":
            return f"{self._base_url(bucket)}/{urllib.parse.quote(key, safe='/~')}"
        quoted = urllib.parse.quote(key, safe="")
        return f"{self._base_url(bucket)}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media"

    # -- listing pages --------------------------------------------------------------------------

    def _s3_page(
        self, bucket: str, prefix: str, token: str | None, timeout: float
    ) -> tuple[list[ObjectInfo], str | None]:
        """One ListObjectsV2 page (keys URL-encoded, so any key survives the XML)."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(PAGE_SIZE), "encoding-type": "url"}
        if token:
            query["continuation-token"] = token
        data = self._list_request(f"{self._base_url(bucket)}/?{urllib.parse.urlencode(query)}", timeout)
        root = ElementTree.fromstring(data)
        encoded = (root.findtext(f"{_S3_NS}EncodingType") or "").lower() == "url"
        items = []
        for element in root.iter(f"{_S3_NS}Contents"):
            key = element.findtext(f"{_S3_NS}Key") or ""
            key = urllib.parse.unquote_plus(key) if encoded else key
            size = int(element.findtext(f"{_S3_NS}Size") or 0)
            items.append(ObjectInfo(key[len(prefix) :], size, (element.findtext(f"{_S3_NS}ETag") or "").strip('"')))
        truncated = (root.findtext(f"{_S3_NS}IsTruncated") or "false").lower() == "true"
        return items, (root.findtext(f"{_S3_NS}NextContinuationToken") or None) if truncated else None

    def _gcs_page(
        self, bucket: str, prefix: str, token: str | None, timeout: float
    ) -> tuple[list[ObjectInfo], str | None]:
        """One JSON API page, asking only for the fields a listing uses."""
        query = {
            "prefix": prefix,
            "maxResults": str(PAGE_SIZE),
            "fields": "items(name,size,md5Hash),nextPageToken",
        }
        if token:
            query["pageToken"] = token
        url = f"{self._base_url(bucket)}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
        page = json.loads(self._list_request(f"{url}?{urllib.parse.urlencode(query)}", timeout))
        items = [
            ObjectInfo(item["name"][len(prefix) :], int(item["size"]), item.get("md5Hash", ""))
            for item in page.get("items", [])
        ]
        return items, page.get("nextPageToken") or None

    def _list_request(self, url: str, timeout: float) -> bytes:
        self.counters.add("LIST")
        response = self._request(url, timeout)
        if response.status != 200:
            raise error_for(response)
        return response.data

    def _request(
        self, url: str, timeout: float, headers: dict[str, str] | None = None, parts: list[int] | None = None
    ) -> Response:
        """GET ``url``, following an S3 region redirect (a 301 with no ``Location``: the right
        endpoint is in the body's ``<Endpoint>`` or the ``x-amz-bucket-region`` header)."""
        response = self.http.request("GET", url, timeout, headers, parts)
        if response.status in REDIRECT_STATUSES and self.source == "aws":
            moved = _s3_redirect_target(url, response)
            if moved:
                log.debug("S3 redirect %s -> %s", url, moved)
                response = self.http.request("GET", moved, timeout, headers, parts)
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


def _split(data: bytes | bytearray, sizes: list[int]) -> list[Buffer]:
    """``data`` cut into buffers of ``sizes`` (the rare path: a resumed or unexpected body)."""
    out, offset = [], 0
    for size in sizes:
        block = new_buffer(size)
        block[:] = data[offset : offset + size]
        out.append(block)
        offset += size
    return out


def _s3_redirect_target(url: str, response: Response) -> str | None:
    """The URL to retry a request at after S3's ``PermanentRedirect`` (same path, new host)."""
    host = None
    with contextlib.suppress(ElementTree.ParseError):
        host = ElementTree.fromstring(response.data).findtext("Endpoint") if response.data else None
    region = response.headers.get("x-amz-bucket-region")
    if not host and region:
        host = f"s3.{region}.amazonaws.com"
    if not host:
        return None
    parts = urllib.parse.urlsplit(url)
    path = parts.path
    bucket = path.split("/")[1] if path.count("/") >= 1 else ""
    if bucket and host.startswith(bucket + ".") and path.startswith(f"/{bucket}"):
        path = path[len(bucket) + 1 :] or "/"  # path-style request, virtual-hosted endpoint
    return urllib.parse.urlunsplit((parts.scheme, host, path, parts.query, ""))
