"""An HTTP proxy on 127.0.0.1 in front of a local S3/GCS server: counts, delays, breaks requests.

Tests need to see what reached the "cloud" (how many GETs, which paths) and to make it fail;
benchmarks need cloud-like latency. A proxy does all three without touching the client: idcfs
simply gets the proxy's URL as its endpoint.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: (method, path) -> a fault to inject instead of forwarding, or None to forward. A fault is an
#: HTTP status (``503``), or one of :data:`FAULT_KINDS` (``"stall:3"``: hold 3 s, then answer).
FaultRule = Callable[[str, str], "int | str | None"]

#: What the proxy can do to a request besides an error status:
#: ``reset`` (RST before any answer), ``truncate`` (half the body, then close), ``stall:S``
#: (S seconds of silence, then the answer), ``slow:BPS`` (the answer at BPS bytes/s),
#: ``badstatus`` (a garbage status line), ``retry-after:S`` (429 with Retry-After: S),
#: ``redirect`` (307 to the upstream), ``moved`` (S3's 301 PermanentRedirect naming the upstream
#: in ``<Endpoint>``, no Location), ``drop`` (close without a word), ``empty`` (an S3 listing
#: with no object: a series not there yet).
FAULT_KINDS = ("reset", "truncate", "stall", "slow", "badstatus", "retry-after", "redirect", "moved", "drop", "empty")

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


class SharedLink:
    """One line's bandwidth, shared by every connection through the proxy (a token bucket):
    eight parallel GETs share it, as on a real 100 Mbit/s office line, where a cap per response
    gave each of them the whole line. ``burst`` bytes may pass at once after a quiet spell."""

    def __init__(self, bytes_per_second: float, burst: int = 64 << 10) -> None:
        self.rate = float(bytes_per_second)
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, count: int) -> None:
        """Wait until ``count`` bytes may pass (first come, first served, in pieces of the burst)."""
        while count > 0:
            piece = min(count, self.burst)
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                self._tokens -= piece  # may go negative: the debt is what this caller waits for
                wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            if wait > 0:
                time.sleep(wait)
            count -= piece


def parse_link(text: str) -> tuple[float, float]:
    """``"100mbit,50ms"`` -> (bytes per second, seconds per request); units kbit, mbit, gbit and
    ms, s."""
    rate_text, _, latency_text = text.partition(",")
    units = {"kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8}
    rate_text = rate_text.strip().lower()
    unit = next((u for u in units if rate_text.endswith(u)), None)
    if unit is None:
        raise ValueError(f"link {text!r}: the bandwidth needs a unit (kbit, mbit, gbit), e.g. 100mbit,50ms")
    latency_text = latency_text.strip().lower() or "0ms"
    latency = float(latency_text[:-2]) / 1e3 if latency_text.endswith("ms") else float(latency_text.rstrip("s"))
    return float(rate_text[: -len(unit)]) * units[unit], latency


@dataclass
class RequestLog:
    """What the proxy saw: every request line, in order, and the bytes of response bodies."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    body_bytes: int = 0
    in_flight: int = 0
    max_in_flight: int = 0  # the most requests being answered at once
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if (method is None or m == method) and contains in p)

    def by_method(self) -> Counter[str]:
        with self.lock:
            return Counter(m for m, _ in self.requests)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.body_bytes = 0
            self.max_in_flight = self.in_flight


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-response (a cancelled read), or an upstream that refuses or
    times out, is normal here, not a traceback."""

    allow_reuse_address = True  # a proxy stopped and started again on its port (an outage)
    daemon_threads = True
    # socketserver's default backlog is 5: a client opening dozens of connections at once had
    # its SYNs dropped and retried a second later. S3 and GCS take them all.
    request_queue_size = 256

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - socketserver's signature
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class CountingProxy:
    """Forwards ``http://127.0.0.1:<port>/...`` to ``upstream``; see the module docstring."""

    def __init__(
        self,
        upstream: str,
        latency: float = 0.0,
        bandwidth: float | None = None,
        port: int = 0,
        link: SharedLink | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.latency = latency
        self.bandwidth = bandwidth  # bytes/s per response, None for unlimited
        self.link = link  # one bandwidth for all connections together, None for unlimited
        self.log = RequestLog()
        self.fault: FaultRule | None = None
        self._connections: set[socket.socket] = set()
        #: Faults injected, by kind (``503``, ``reset``, ``stall``...).
        self.faults: Counter[str] = Counter()
        self._server = _QuietServer(("127.0.0.1", port), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, name="proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering, and cut the connections clients keep alive (an outage, for them)."""
        self._server.shutdown()
        self._server.server_close()
        with self.log.lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def settle(self, quiet_for: float = 0.5, timeout: float = 30.0) -> bool:
        """Wait until no request is in flight and no body byte has passed for ``quiet_for``
        seconds: background work (readahead, prefetch) has landed or never started. Counts are
        read after it; nothing about time is asserted."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.log.body_bytes
            if now != last or self.log.in_flight:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_for:
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out as separate writes: without TCP_NODELAY, Nagle's
                # algorithm meets the client's delayed ACK and stalls keep-alive responses ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with proxy.log.lock:
                    proxy._connections.add(self.connection)

            def finish(self) -> None:
                with proxy.log.lock:
                    proxy._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def _forward(self) -> None:
                with proxy.log.lock:
                    proxy.log.requests.append((self.command, self.path))
                    proxy.log.in_flight += 1
                    proxy.log.max_in_flight = max(proxy.log.max_in_flight, proxy.log.in_flight)
                try:
                    self._answer()
                finally:
                    with proxy.log.lock:
                        proxy.log.in_flight -= 1

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.latency:
                    time.sleep(proxy.latency)
                fault = proxy.fault(self.command, self.path) if proxy.fault else None
                pace = None
                if fault is not None and fault is not False:
                    with proxy.log.lock:
                        proxy.faults[str(fault).split(":")[0]] += 1
                    if isinstance(fault, str) and fault.startswith("stall:"):
                        time.sleep(float(fault.split(":")[1]))
                    elif isinstance(fault, str) and fault.startswith("slow:"):
                        pace = float(fault.split(":")[1])
                    elif fault == "truncate":
                        self._truncated = True
                    elif self._inject(fault):
                        return
                connection = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP:
                            self.send_header(key, value)
                    if response.getheader("Content-Length") is None and self.command != "HEAD":
                        # A chunked upstream body (listings): pass it on whole, with its length.
                        data = response.read()
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self._send(data)
                        return
                    self.end_headers()
                    if self.command != "HEAD":
                        if getattr(self, "_truncated", False):
                            self._truncated = False
                            length = int(response.getheader("Content-Length") or 0)
                            self._send(response.read(max(0, length // 2)))
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        self._stream(response, pace)
                finally:
                    connection.close()  # a client that hung up stops the upstream read too

            def _stream(self, response: http.client.HTTPResponse, pace: float | None = None) -> None:
                """Copy the body as it arrives (a client may read a range of a large object and
                hang up), counting what was passed on, paced to ``bandwidth`` when set."""
                while chunk := response.read(16 * 1024 if pace or proxy.link else 256 * 1024):
                    self._send(chunk, pace)

            def _send(self, chunk: bytes, pace: float | None = None) -> None:
                if proxy.link is not None:
                    proxy.link.take(len(chunk))
                self.wfile.write(chunk)
                with proxy.log.lock:
                    proxy.log.body_bytes += len(chunk)
                rate = pace or proxy.bandwidth
                if rate:
                    time.sleep(len(chunk) / rate)

            def _inject(self, fault: int | str) -> bool:
                """Answer (or fail) the request as ``fault`` says; False to forward it after all."""
                if fault in ("reset", "drop"):
                    if fault == "reset":  # SO_LINGER 0: close() sends RST
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return True
                if fault == "badstatus":
                    self.wfile.write(b"HTTX/9.9 what\r\n\r\n")
                    self.close_connection = True
                    return True
                headers = {"Content-Type": "application/xml"}
                status, payload = 500, b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                if isinstance(fault, int):
                    status = fault
                    if fault == 503:
                        payload = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                elif fault.startswith("retry-after:"):
                    status, headers["Retry-After"] = 429, fault.split(":")[1]
                elif fault == "redirect":
                    status, headers["Location"] = 307, f"http://{proxy.upstream_host}:{proxy.upstream_port}{self.path}"
                elif fault == "empty":
                    status, headers["Content-Type"] = 200, "application/xml"
                    payload = (
                        b'<?xml version="1.0" encoding="UTF-8"?>'
                        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                        b"<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>"
                    )
                elif fault == "moved":
                    status = 301
                    payload = (
                        b"<Error><Code>PermanentRedirect</Code><Message>use this endpoint</Message>"
                        + f"<Endpoint>{proxy.upstream_host}:{proxy.upstream_port}</Endpoint></Error>".encode()
                    )
                else:
                    return False
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return True

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PROPFIND = _forward

        return Handler


class ConnectProxy:
    """A forward proxy on 127.0.0.1, as ``HTTPS_PROXY``/``HTTP_PROXY`` point to: ``CONNECT``
    tunnels (TLS passes through untouched) and absolute-form ``GET http://...`` requests. It
    counts what it carried (``tunnels``, ``requests``: lists of ``host:port``)."""

    def __init__(self) -> None:
        import socketserver

        self.tunnels: list[str] = []
        self.requests: list[str] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(65536).decode("latin-1")
                headers = []
                while (header := self.rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
                    headers.append(header)
                method, target, _ = (line.split() + ["", "", ""])[:3]
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    proxy.tunnels.append(target)
                    upstream = socket.create_connection((host, int(port)), timeout=30)
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self.wfile.flush()
                    _pipe(self.connection, upstream)
                    return
                parts = urlsplit(target)
                if not parts.hostname:
                    self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                proxy.requests.append(f"{parts.hostname}:{parts.port or 80}")
                upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=30)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                kept = [h for h in headers if not h.lower().startswith((b"proxy-", b"connection"))]
                upstream.sendall(
                    f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(kept) + b"Connection: close\r\n\r\n"
                )
                _pipe(self.connection, upstream)

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="connect-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(client, selectors.EVENT_READ, upstream)
    selector.register(upstream, selectors.EVENT_READ, client)
    try:
        while True:
            for key, _ in selector.select(timeout=60):
                data = key.fileobj.recv(256 * 1024)  # type: ignore[union-attr]
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        selector.close()
        upstream.close()
