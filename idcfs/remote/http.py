"""One HTTP stack for every request idcfs sends: LISTs and GETs, S3 and GCS.

Listing used to go through botocore (S3) and aiohttp (gcsfs) while reads went through urllib3:
three trust stores, three proxy rules, three retry behaviours, so on a network with TLS
inspection or a proxy, reads could work while listings failed, or the reverse. Every request now
goes through this one urllib3 stack:

- **proxy** chosen per request URL, the way curl and requests do: ``HTTPS_PROXY`` /
  ``HTTP_PROXY`` / ``ALL_PROXY`` unless ``NO_PROXY`` matches the host (an S3 proxy is not used
  for Google's hosts just because it was chosen first);
- **CA bundle** from ``AWS_CA_BUNDLE``, ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE`` or
  ``CURL_CA_BUNDLE`` (the first set), ``SSL_CERT_DIR``, else the system's store;
- **no retries and no redirects inside urllib3**: :mod:`idcfs.remote.retry` owns the policy, and
  redirects are followed here, a few hops at most (an S3 region redirect has no ``Location``:
  the caller rewrites it, see :mod:`idcfs.remote.store`).

Pools are created lazily: a thread-free object until the first request, so it survives the
daemon's fork.
"""

from __future__ import annotations

import mmap
import os
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Environment variables naming a CA bundle, in the order they are honoured.
CA_BUNDLE_VARIABLES = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
#: Connections kept per host: the reader's background pool and the FUSE threads share them.
POOL_SIZE = 64
#: Bytes read from a body at a time (between two checks of the attempt's time).
BODY_CHUNK = 1 << 20


class HttpStatusError(Exception):
    """A response with an error status; ``status`` and ``retry_after`` drive the retry decision."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Response:
    status: int
    headers: Any  # urllib3's HTTPHeaderDict: case-insensitive
    data: bytes
    #: With ``parts=``: the body as buffers of those sizes (then ``data`` is empty).
    parts: list[Buffer] | None = None


def ca_bundle() -> str | None:
    """The CA bundle file the environment names, if any."""
    for variable in CA_BUNDLE_VARIABLES:
        value = os.environ.get(variable)
        if value:
            return value
    return None


class Http:
    """Requests with the environment's proxy and CA rules, connection reuse, no hidden retries."""

    def __init__(self, environ: dict[str, str] | None = None, allocate: Allocate = bytearray) -> None:
        self.allocate = allocate
        self._proxies = _proxies_from(environ if environ is not None else dict(os.environ))
        self._ca_file = ca_bundle()
        self._ca_dir = os.environ.get("SSL_CERT_DIR") or None
        self._managers: dict[str | None, Any] = {}
        self._lock = threading.Lock()

    def proxy_for(self, url: str) -> str | None:
        """The proxy a request to ``url`` goes through, or None (direct)."""
        parts = urllib.parse.urlsplit(url)
        proxy = self._proxies.get(parts.scheme) or self._proxies.get("all")
        if not proxy or _bypassed(parts.hostname or "", parts.port, self._proxies.get("no", "")):
            return None
        return proxy

    def request(
        self,
        method: str,
        url: str,
        timeout: float,
        headers: dict[str, str] | None = None,
        parts: list[int] | None = None,
        arrived: Arrived | None = None,
    ) -> Response:
        """One request, following ``Location`` redirects; the body read whole and length-checked,
        all within ``timeout`` seconds (a body trickling in at a few bytes a second is cut off:
        urllib3's read timeout bounds each wait for bytes, not the whole body).

        Errors are urllib3's and the standard library's own exceptions (see :mod:`idcfs.remote.retry`);
        an error status is an :class:`HttpStatusError`.

        ``parts`` (sizes summing to the expected body): a successful body of exactly that length
        is read straight into one new buffer a part, with no intermediate copies (each copy of a
        megabyte into fresh memory costs 256 page faults, the daemon's largest CPU cost when
        streaming); any other body is read as usual. ``arrived`` (with ``parts``) is told the
        first part's progress, once the answer says it carries the range asked for.
        """
        import time

        import urllib3

        give_up = time.monotonic() + timeout
        for _ in range(MAX_REDIRECTS + 1):
            left = max(0.05, give_up - time.monotonic())
            response = self._manager(self.proxy_for(url)).request(
                method,
                url,
                headers=headers,
                timeout=urllib3.Timeout(connect=min(left, 10.0), read=left),
                retries=False,
                redirect=False,
                preload_content=False,
                enforce_content_length=True,
            )
            try:
                tell = arrived if arrived is not None and _carries_range(response, headers) else None
                buffers = _read_parts(response, parts, give_up, self.allocate, tell) if parts else None
                data = b"" if buffers is not None else _read_body(response, give_up)
            except BaseException as error:
                response.close()  # a connection in an unknown state never goes back to the pool
                # Bytes that did arrive, and where in the object they start (only when the
                # answer says so: a server ignoring the Range header would start at 0).
                error.partial_start = _range_start(response)  # type: ignore[attr-defined]
                raise
            response.release_conn()
            location = response.headers.get("Location")
            if response.status in REDIRECT_STATUSES and location:
                url = urllib.parse.urljoin(url, location)
                continue
            return Response(response.status, response.headers, data, buffers)
        raise HttpStatusError(310, f"more than {MAX_REDIRECTS} redirects for {url}")

    def _manager(self, proxy: str | None) -> Any:
        with self._lock:
            manager = self._managers.get(proxy)
            if manager is None:
                manager = self._managers[proxy] = self._new_manager(proxy)
            return manager

    def _new_manager(self, proxy: str | None) -> Any:
        import urllib3

        tls: dict[str, Any] = {}
        if self._ca_file:
            tls["ca_certs"] = self._ca_file
        if self._ca_dir:
            tls["ca_cert_dir"] = self._ca_dir
        if proxy:
            return urllib3.ProxyManager(proxy, num_pools=8, maxsize=POOL_SIZE, **tls)
        return urllib3.PoolManager(num_pools=8, maxsize=POOL_SIZE, **tls)


class BodyTimeoutError(TimeoutError):
    """A response body that did not arrive whole within the attempt's time."""


class TruncatedBody(ConnectionError):
    """The connection ended before the body's announced length."""


def _read_body(response: Any, give_up: float) -> bytes:
    """The whole body, read as it arrives so the time limit is checked between arrivals. On an
    error, the bytes received so far ride along as the exception's ``partial``."""
    import time

    length = response.headers.get("Content-Length")
    expected = int(length) if length and not response.headers.get("Content-Encoding") else None
    chunks: list[bytes] = []
    received = 0
    try:
        while chunk := response.read1(BODY_CHUNK):
            chunks.append(chunk)
            received += len(chunk)
            if time.monotonic() > give_up:
                raise BodyTimeoutError(f"response body too slow: {received} bytes in the time of one attempt")
        if expected is not None and received != expected:
            raise TruncatedBody(f"connection closed after {received} of {expected} bytes")
    except BaseException as error:
        error.partial = b"".join(chunks)  # type: ignore[attr-defined]
        raise
    return b"".join(chunks)


#: A block of an object as read off the network: written once here, never changed after.
Buffer = bytearray | mmap.mmap
#: Makes the buffer for ``size`` bytes of a body (the block layer passes its pool's; the bytes
#: are overwritten, so a recycled buffer does).
Allocate = Callable[[int], Buffer]
#: Told, as a body comes in, its first part's buffer and how many of its bytes are in (a demand
#: read answered from a block while the rest of it still arrives). Bytes below that count
#: never change after.
Arrived = Callable[[Buffer, int], None]
#: With ``arrived``, the body is read in steps this small, so the first bytes are handed over
#: as they come (a step returns only once full).
ARRIVAL_STEP = 64 << 10


def _read_parts(
    response: Any, parts: list[int], give_up: float, allocate: Allocate, arrived: Arrived | None = None
) -> list[Buffer] | None:
    """The body as new buffers of ``parts`` sizes, read with ``readinto`` from the connection
    itself; None (nothing read) unless the response is a plain 2xx body of exactly that length.
    ``arrived``: told the first part's progress (see :data:`Arrived`)."""
    import time

    length = response.headers.get("Content-Length")
    raw = getattr(response, "_fp", None)  # the http.client response urllib3 reads from
    if (
        not 200 <= response.status < 300
        or response.headers.get("Content-Encoding")
        or not length
        or int(length) != sum(parts)
        or not hasattr(raw, "readinto")
    ):
        return None
    buffers = [allocate(size) for size in parts]
    received = 0
    try:
        for k, buffer in enumerate(buffers):
            view, filled = memoryview(buffer), 0
            tell = arrived if k == 0 else None
            step = ARRIVAL_STEP if tell is not None else BODY_CHUNK
            while filled < len(buffer):
                count = raw.readinto(view[filled : filled + step])  # type: ignore[union-attr]
                if not count:
                    raise TruncatedBody(f"connection closed after {received} of {length} bytes")
                filled += count
                received += count
                if tell is not None:
                    tell(buffer, filled)
                if time.monotonic() > give_up:
                    raise BodyTimeoutError(f"response body too slow: {received} bytes in the time of one attempt")
    except BaseException as error:
        error.partial = b"".join(buffers)[:received]  # type: ignore[attr-defined]
        raise
    return buffers


def _carries_range(response: Any, headers: dict[str, str] | None) -> bool:
    """Whether ``response`` carries the bytes the ``Range`` of ``headers`` asked for from their
    first byte: a 206 saying so, or a whole body (200) when the range starts at 0."""
    asked = (headers or {}).get("Range", "")
    if not asked.startswith("bytes=") or "-" not in asked:
        return False
    try:
        first = int(asked[len("bytes=") :].split("-", 1)[0])
    except ValueError:
        return False
    if response.status == 206:
        return _range_start(response) == first
    return response.status == 200 and first == 0


def _range_start(response: Any) -> int | None:
    """The first byte of the object a response carries, from ``Content-Range: bytes a-b/n``."""
    value = response.headers.get("Content-Range", "")
    if not value.startswith("bytes ") or "-" not in value:
        return None
    try:
        return int(value[len("bytes ") :].split("-", 1)[0])
    except ValueError:
        return None


def error_for(response: Response) -> HttpStatusError:
    """The exception for an error response: its status, the start of its body, Retry-After."""
    body = " ".join(response.data[:200].decode("utf-8", "replace").split())
    return HttpStatusError(
        response.status, f"HTTP {response.status}: {body}", _retry_after(response.headers.get("Retry-After"))
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait, from ``Retry-After: 3`` or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils
    import time

    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - time.time())


def _proxies_from(environ: dict[str, str]) -> dict[str, str]:
    """``{"https": ..., "http": ..., "all": ..., "no": ...}`` from the environment, lower case
    winning as in curl (``HTTP_PROXY`` is ignored under CGI, as urllib does)."""
    proxies: dict[str, str] = {}
    for scheme in ("http", "https", "all", "no"):
        for name in (f"{scheme.upper()}_PROXY", f"{scheme}_proxy"):
            value = environ.get(name)
            if value:
                proxies[scheme] = value
    if "REQUEST_METHOD" in environ:
        proxies.pop("http", None)
    return proxies


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` covers ``host`` (``*``, exact names, domain suffixes, ``host:port``)."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and port is not None and entry_port != str(port):
            continue
        name = name.lstrip(".").strip("[]")
        if host == name or host.endswith("." + name):
            return True
    return False
