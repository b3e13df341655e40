"""An HTTP proxy on 127.0.0.1 in front of a local S3/GCS server: counts, delays, breaks requests.

Tests need to see what reached the "cloud" (how many GETs, which paths) and to make it fail;
benchmarks need cloud-like latency. A proxy does all three without touching the client: idcfs
simply gets the proxy's URL as its endpoint.
"""

from __future__ import annotations

import http.client
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: (method, path) -> an HTTP status to answer instead of forwarding, or None to forward.
FaultRule = Callable[[str, str], "int | None"]

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


@dataclass
class RequestLog:
    """What the proxy saw: every request line, in order, and the bytes of response bodies."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    body_bytes: int = 0
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


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-response (a cancelled read) is normal here, not a traceback."""

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - socketserver's signature
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class CountingProxy:
    """Forwards ``http://127.0.0.1:<port>/...`` to ``upstream``; see the module docstring."""

    def __init__(self, upstream: str, latency: float = 0.0, bandwidth: float | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.latency = latency
        self.bandwidth = bandwidth  # bytes/s per response, None for unlimited
        self.log = RequestLog()
        self.fault: FaultRule | None = None
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

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

            def _forward(self) -> None:
                with proxy.log.lock:
                    proxy.log.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.latency:
                    time.sleep(proxy.latency)
                fault = proxy.fault(self.command, self.path) if proxy.fault else None
                if fault is not None:
                    payload = b"<Error><Code>InternalError</Code><Message>injected by test proxy</Message></Error>"
                    self.send_response(fault)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
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
                        self._stream(response)
                finally:
                    connection.close()  # a client that hung up stops the upstream read too

            def _stream(self, response: http.client.HTTPResponse) -> None:
                """Copy the body as it arrives (a client may read a range of a large object and
                hang up), counting what was passed on, paced to ``bandwidth`` when set."""
                while chunk := response.read(256 * 1024):
                    self._send(chunk)

            def _send(self, chunk: bytes) -> None:
                self.wfile.write(chunk)
                with proxy.log.lock:
                    proxy.log.body_bytes += len(chunk)
                if proxy.bandwidth:
                    time.sleep(len(chunk) / proxy.bandwidth)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _forward

        return Handler
