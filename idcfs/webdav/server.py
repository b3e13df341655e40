"""The WebDAV share's server: wsgidav's application over :class:`IdcProvider`, on cheroot.

Safe defaults, as a served face must have them: it listens on loopback unless told otherwise,
and another address is refused without ``--auth`` (and warned about without TLS). PROPFIND with
``Depth: infinity`` (or none, which RFC 4918 reads as infinity) is refused before wsgidav sees
it: it would walk a million series; depth 0 and 1 are streamed (:mod:`idcfs.webdav.propfind`).
Every wait on a client has a deadline (:mod:`idcfs.webdav.deadline`), so a slow or silent client
cannot hold a worker thread for ever.

What the desktop clients send is answered as they need it (tests/test_webdav_clients.py replays
Finder, Windows, gvfs and KIO): a file not modified since the date a client has is a 304
(:class:`NotModified`), and an answer without a length (a streamed multistatus, a 304) keeps its
connection, which wsgidav would close. A plain GET of a file, most of what the share answers, is
answered ahead of wsgidav (:mod:`idcfs.webdav.fileget`).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsgidav import util as wsgidav_util
from wsgidav.mw.base_mw import BaseMiddleware

from idcfs.vfs.vfs import Vfs
from idcfs.webdav.propfind import CONDITIONS, STREAMED
from idcfs.webdav.provider import FileResource, IdcProvider

log = logging.getLogger(__name__)

#: Seconds a client has for each wait on it: its request's head, its body, each chunk of an answer.
CLIENT_TIMEOUT = 30.0
#: Worker threads answering requests (each reads through the core, which fetches in parallel).
WORKERS = 32
#: Connections the kernel holds for the server before it accepts them. cheroot's default, 5,
#: dropped connections that Finder, Explorer or a lab's clients opened at once (each dropped SYN
#: costs its client a second's retransmission); the kernel caps it at ``net.core.somaxconn``.
BACKLOG = 1024

_FINITE_DEPTH = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<D:error xmlns:D="DAV:"><D:propfind-finite-depth/></D:error>\n'
)


class ServeError(ValueError):
    """A listen address, an auth file or TLS files that cannot be used (the message says why)."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (loopback) or ``[v6]:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServeError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_client_timeout(seconds: float) -> None:
    if not (math.isfinite(seconds) and seconds > 0):
        raise ServeError(f"--client-timeout {seconds:g}: expected a number of seconds above 0")


def read_users(path: Path) -> dict[str, str]:
    """``user:password`` lines (``#`` comments, blank lines ignored) -> user -> password."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ServeError(f"--auth {path}: {error.strerror or error}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ServeError(f"--auth {path}, line {number}: expected user:password")
        users[user] = password
    if not users:
        raise ServeError(f"--auth {path} names no user")
    return users


def guarded(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """What is refused before wsgidav sees it, with a whole answer: a path with a ``.`` or ``..``
    segment, a backslash or a NUL (400; wsgidav's own answer to ``..`` promised a body it never
    sent, and the client waited), and PROPFIND of unbounded depth (403 with
    DAV:propfind-finite-depth, RFC 4918 9.1)."""

    def answer(start_response: Callable[..., Any], status: str, body: bytes, kind: str) -> list[bytes]:
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return [body]

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if any(part in (".", "..") for part in path.split("/")) or "\\" in path or "\0" in path:
            return answer(start_response, "400 Bad Request", b"not a path of the tree\n", "text/plain")
        if environ.get("REQUEST_METHOD") == "PROPFIND" and environ.get("HTTP_DEPTH", "infinity").lower() == "infinity":
            return answer(start_response, "403 Forbidden", _FINITE_DEPTH, 'application/xml; charset="utf-8"')

        def kept_alive(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            # wsgidav closes the connection of every answer without a length: a streamed
            # multistatus has none (it is chunked), a 304 none (it has no body); the server drains
            # what is left of a request's body (deadline.py), so the connection stays.
            if environ.get(STREAMED) or status.startswith("304"):
                headers = [(k, v) for k, v in headers if (k.lower(), v.lower()) != ("connection", "close")]
            return start_response(status, headers, exc_info)

        return app(environ, kept_alive)

    return wrapped


class NotModified(BaseMiddleware):
    """GET and HEAD of a file with ``If-Modified-Since`` answered 304 when the file is not newer
    than the date (RFC 9110 13.1.3), before wsgidav, which answers 304 only for a date after the
    file's and so sent the whole file again to Finder, which revalidates a cached file with
    exactly the Last-Modified it was given. Every file of the tree is immutable. A request with
    another condition (If-None-Match, which takes precedence, If-Match, ...) goes to wsgidav."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        since = environ.get("HTTP_IF_MODIFIED_SINCE")
        if (
            environ.get("REQUEST_METHOD") not in ("GET", "HEAD")
            or not since
            or any(environ.get(header) for header in _OTHER_CONDITIONS)
        ):
            return self.next_app(environ, start_response)
        seconds = wsgidav_util.parse_time_string(since)
        provider = environ.get("wsgidav.provider")
        if seconds is None or provider is None:
            return self.next_app(environ, start_response)  # no date: the header is ignored
        resource = provider.get_resource_inst(environ["PATH_INFO"], environ)
        if not isinstance(resource, FileResource):
            return self.next_app(environ, start_response)
        modified = resource.get_last_modified()
        if int(modified) > seconds:
            return self.next_app(environ, start_response)
        start_response(
            "304 Not Modified",
            [
                ("ETag", f'"{resource.get_etag()}"'),
                ("Last-Modified", wsgidav_util.get_rfc1123_time(modified)),
                ("Date", wsgidav_util.get_rfc1123_time()),
            ],
        )
        return [b""]


#: The conditions NotModified leaves to wsgidav: all but its own.
_OTHER_CONDITIONS = tuple(header for header in CONDITIONS if header != "HTTP_IF_MODIFIED_SINCE")


@dataclass(frozen=True)
class Extension:
    """Another face answered by the same server (DICOMweb): wsgidav middleware put ahead of the
    authenticator (``front``: CORS preflights carry no credentials) and behind it (``behind``),
    and what they read from wsgidav's configuration; ``close`` ends its own work in flight once
    the server has stopped."""

    front: Sequence[type] = ()
    behind: Sequence[type] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


def build_app(
    vfs: Vfs, users: dict[str, str] | None, extension: Extension | None = None
) -> Callable[..., Iterable[bytes]]:
    from wsgidav.dir_browser import WsgiDavDirBrowser
    from wsgidav.error_printer import ErrorPrinter
    from wsgidav.http_authenticator import HTTPAuthenticator
    from wsgidav.request_resolver import RequestResolver
    from wsgidav.wsgidav_app import WsgiDAVApp

    from idcfs.webdav.fileget import FileGet
    from idcfs.webdav.propfind import StreamedPropfind

    extension = extension or Extension()
    user_mapping: dict[str, Any] = {"*": True}  # anonymous (loopback only)
    if users is not None:
        user_mapping = {"*": {user: {"password": password} for user, password in users.items()}}
    config = {
        "provider_mapping": {"/": IdcProvider(vfs)},
        "simple_dc": {"user_mapping": user_mapping},
        "http_authenticator": {"accept_basic": True, "accept_digest": True, "default_to_digest": True},
        # What wsgidav reads from a file per chunk it sends (its default, 8 KiB, is 64 Python
        # calls for a 512 KiB DICOM instance; cheroot writes each chunk at once).
        "block_size": 256 << 10,
        # wsgidav's own stack, with PROPFIND of depth 0 and 1 taken (streamed), a file not
        # modified since a date answered 304 and a plain GET of a file answered (fileget.py)
        # once the user is known.
        "middleware_stack": [
            ErrorPrinter,
            *extension.front,
            HTTPAuthenticator,
            *extension.behind,
            NotModified,
            FileGet,
            WsgiDavDirBrowser,
            StreamedPropfind,
            RequestResolver,
        ],
        "lock_storage": None,  # read-only: LOCK is 405
        "property_manager": None,
        "verbose": 1,
        "logging": {"enable": False},  # idcfs's own log says what matters
        "dir_browser": {"enable": True, "response_trailer": "idcfs: NCI Imaging Data Commons, read-only"},
        **extension.config,
    }
    return guarded(WsgiDAVApp(config))


def serve(
    vfs: Vfs,
    host: str,
    port: int,
    users: dict[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    client_timeout: float = CLIENT_TIMEOUT,
    extension: Extension | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (or ``stop`` is set); ``on_ready(url)`` once listening."""
    from idcfs.webdav.deadline import TimedServer

    if not is_loopback(host) and users is None:
        raise ServeError(f"listening on {host} needs --auth FILE (user:password lines): anyone could read through it")
    check_client_timeout(client_timeout)
    server = TimedServer(
        (host, port), build_app(vfs, users, extension), client_timeout, numthreads=WORKERS, request_queue_size=BACKLOG
    )
    server.shutdown_timeout = 5
    scheme = "http"
    if tls is not None:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(str(tls[0]), str(tls[1]))
        scheme = "https"
    elif not is_loopback(host):
        log.warning("serving %s without TLS: passwords and data cross the network in the clear", host)
    server.prepare()
    vfs.start_background()
    bound_host, bound_port = server.bind_addr[:2]
    url = f"{scheme}://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}/"
    done = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: done.set())
    runner = threading.Thread(target=server.serve, name="webdav", daemon=True)
    server.client_clocks.start()
    runner.start()
    log.info("serving %s", url)
    if on_ready is not None:
        on_ready(url)
    try:
        while not done.wait(0.5):
            if not runner.is_alive():
                break
    finally:
        server.stop()
        runner.join(10)
        server.client_clocks.stop()
