"""A deadline on the client's side of every request, so a slow client cannot hold a worker.

A socket timeout bounds one silence, not a request: a client that sends its headers a byte at
a time, each just inside the timeout, would keep a worker (one of a fixed pool) for ever. So the
server arms a clock while it waits on the client: reading a request's head, reading its body,
and sending each chunk of the answer. The work in between (a block fetched, a listing read) is
the core's, bounded by its own deadlines, and is not counted. A watch thread shuts down the
socket of a connection whose clock ran out; the worker's blocked call then fails at once and
cheroot closes the connection.

A request's body the application never read (a PROPFIND's for a name that does not exist, a
refused PUT's) is read and dropped by the server before it answers, under the same deadline, so
the next request on the connection starts where it should: at most :data:`DRAIN_LIMIT` bytes of
it; a larger body, a chunked one, or one that cannot be read whole closes the connection after
the answer (``Connection: close``), which is still sent whole.

The server these clocks run in also sends as the share needs (:mod:`idcfs.webdav.sending`: a
chunk straight from its buffer, a head with its body's first bytes) and keeps a kept-alive
connection's worker for the next request while it follows at once (:data:`NEXT_REQUEST_WAIT`).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.makefile import MakeFile

from idcfs.vfs.body import CUT_SHORT, VIEWS
from idcfs.webdav import sending

log = logging.getLogger(__name__)


#: The most of a request's unread body that is read and dropped to keep its connection: a
#: client's PROPFIND body is a few hundred bytes; anything longer (a PUT the share refuses)
#: closes the connection instead of being read.
DRAIN_LIMIT = 64 << 10

#: How long a worker waits for a kept-alive connection's next request before it hands the
#: connection back to cheroot's selector.
NEXT_REQUEST_WAIT = 0.002


class ClientClocks:
    """The connections waiting on their client, each with the time it must have answered by."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._due: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watch = threading.Thread(target=self._run, name="webdav-deadlines", daemon=True)

    def start(self) -> None:
        self._watch.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._watch.is_alive():
            self._watch.join(5)

    def arm(self, sock: socket.socket) -> None:
        with self._lock:
            self._due[sock] = time.monotonic() + self.seconds

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            self._due.pop(sock, None)

    @contextlib.contextmanager
    def waiting(self, sock: socket.socket) -> Iterator[None]:
        """A wait on the client; one inside another (a body drained while an answer's first chunk
        is written) is part of the outer wait and its deadline."""
        with self._lock:
            outer = sock in self._due
            if not outer:
                self._due[sock] = time.monotonic() + self.seconds
        try:
            yield
        finally:
            if not outer:
                self.disarm(sock)

    def _run(self) -> None:
        tick = min(1.0, self.seconds / 4)
        while not self._stopped.wait(tick):
            now = time.monotonic()
            with self._lock:
                overdue = [sock for sock, due in self._due.items() if due <= now]
                for sock in overdue:
                    del self._due[sock]
            for sock in overdue:
                log.info("closing a connection: its client sent or took nothing for %.0f s", self.seconds)
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    """End a connection from another thread: the plain socket's shutdown, also under TLS (it
    wakes the blocked call without touching the TLS object another thread is inside)."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _TimedInput:
    """A request body whose every read is a wait on the client."""

    def __init__(self, inner: Any, clocks: ClientClocks, sock: socket.socket) -> None:
        self._inner = inner
        self._clocks = clocks
        # Not ``_sock``: wsgidav (util.read_and_discard_input) takes a wsgi.input with a ``_sock``
        # for a socket's file, makes that socket non-blocking to read an unread body, and leaves
        # it so when the read fails, as it does when the body has not all arrived: cheroot's next
        # read of the connection then got None and raised, and the answer was never sent.
        self._socket = sock

    def read(self, size: int | None = None) -> bytes:
        with self._clocks.waiting(self._socket):
            return bytes(self._inner.read(size))

    def readline(self, size: int | None = None) -> bytes:
        with self._clocks.waiting(self._socket):
            return bytes(self._inner.readline(size))

    def readlines(self, hint: int | None = None) -> list[bytes]:
        with self._clocks.waiting(self._socket):
            return list(self._inner.readlines(hint))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class _Gateway(wsgi.Gateway_10):
    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]  # cheroot says None
        environ: dict[str, Any] = super().get_environ()
        conn = self.req.conn
        environ["wsgi.input"] = _TimedInput(environ["wsgi.input"], conn.server.client_clocks, conn.socket)
        environ[VIEWS] = True
        environ[CUT_SHORT] = self._cut_short
        return environ

    def _cut_short(self) -> None:
        self.req.close_connection = True
        self.req.chunked_write = False  # no last chunk: the answer must not look whole
        _shut_down(self.req.conn.socket)

    def respond(self) -> None:
        """cheroot's, taking a chunk that is a view of a buffer as well as ``bytes`` (the share
        says so in the environ: :data:`idcfs.vfs.body.VIEWS`)."""
        response = self.req.server.wsgi_app(self.env, self.start_response)
        try:
            for chunk in response:
                if not isinstance(chunk, (bytes, memoryview)):
                    raise ValueError("WSGI Applications must yield bytes")
                if len(chunk):
                    self.write(chunk)
        finally:
            self.req.ensure_headers_sent()
            close = getattr(response, "close", None)
            if close is not None:
                close()


class _Request(cheroot_server.HTTPRequest):
    #: A response's head, held back to go out with the first chunk of its body (sending.py).
    _head = b""

    def respond(self) -> None:
        self.conn.server.client_clocks.disarm(self.conn.socket)  # the head is in: the core's turn
        self._head = b""
        super().respond()
        if self._head:  # a body was promised but none came: the head alone
            self.write(b"")

    def write(self, chunk: bytes | memoryview) -> None:
        sock = self.conn.socket
        with self.conn.server.client_clocks.waiting(sock):
            head, self._head = self._head, b""
            if self.chunked_write and chunk:
                chunk = b"%x\r\n%b\r\n" % (len(chunk), bytes(chunk))  # a listing's chunk: small
            sending.send(sock, chunk, head)
            self.conn.wfile.bytes_written += len(head) + len(chunk)

    def send_headers(self) -> None:
        with self.conn.server.client_clocks.waiting(self.conn.socket):
            if not self.close_connection:
                self.close_connection = not self._drained()
            wfile, held = self.conn.wfile, _Held()
            self.conn.wfile = held  # cheroot writes the head to it
            try:
                super().send_headers()  # with Connection: close if the body was not drained
            finally:
                self.conn.wfile = wfile
            self._head = bytes(held.data)
            if self.chunked_write or self.method == b"HEAD" or not self._body_promised():
                self.write(b"")  # nothing may follow that does not go through write: send it now

    def _body_promised(self) -> bool:
        for key, value in self.outheaders:
            if key.lower() == b"content-length":
                return value.strip() not in (b"0", b"")
        return False

    def _drained(self) -> bool:
        """Whether what is left of the request's body has been read (and dropped) so that the
        connection can carry the next request. cheroot's own drain read it whole in one call,
        however long, and raised when the read came back empty-handed."""
        rfile = self.rfile
        if self.chunked_read:
            return bool(getattr(rfile, "closed", False))  # read to its end by the application
        remaining = getattr(rfile, "remaining", 0)
        if remaining <= 0:
            return True
        if remaining > DRAIN_LIMIT:
            return False
        sock = self.conn.socket
        try:
            if sock.gettimeout() is not None:
                sock.settimeout(None)  # blocking again, whoever changed it (the clock bounds it)
            while rfile.remaining > 0:
                if not rfile.read(min(rfile.remaining, DRAIN_LIMIT)):
                    return False  # the client stopped sending (or half-closed)
        except (OSError, ValueError, TypeError):  # reset, timed out, cut off, or a read of nothing
            return False
        return True


class _Held:
    """Where cheroot writes a response's head, to be sent with the body."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


class _TimedWriter:
    """The connection's writer, each write a wait on the client: cheroot writes some answers to
    it itself, after the application's turn has disarmed the clock (a chunked body's last chunk,
    an error answer when the application failed), on a blocking socket."""

    def __init__(self, inner: Any, clocks: ClientClocks, sock: socket.socket) -> None:
        self._inner = inner
        self._clocks = clocks
        self._socket = sock

    @property
    def bytes_written(self) -> int:
        return int(self._inner.bytes_written)

    @bytes_written.setter
    def bytes_written(self, value: int) -> None:
        self._inner.bytes_written = value

    def write(self, data: bytes) -> int:
        with self._clocks.waiting(self._socket):
            return int(self._inner.write(data) or 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request

    def __init__(self, server: Any, sock: socket.socket, makefile: Any = MakeFile) -> None:
        super().__init__(server, sock, makefile)
        self.wfile = _TimedWriter(self.wfile, server.client_clocks, sock)

    def communicate(self) -> bool:
        """Requests of the connection while they come one after another; the connection goes
        back to cheroot's selector once its client is quiet for :data:`NEXT_REQUEST_WAIT` (or the
        server stops). A client reading a series asks for the next file as soon as it has the
        last: waiting for it here spares the hand-over to the selector thread and back to a
        worker, per request (two thread wake-ups and two epoll changes under one lock)."""
        clocks: ClientClocks = self.server.client_clocks
        if self.socket.gettimeout() is not None:
            # Blocking: Python polls before every send and receive on a socket with a timeout
            # (two system calls, and the GIL given up and taken back twice); the clocks bound
            # each wait on the client instead.
            self.socket.settimeout(None)
        while True:
            clocks.arm(self.socket)  # until the request's head has been read
            try:
                kept = bool(super().communicate())
            finally:
                clocks.disarm(self.socket)
            if not kept or not self.server.ready:
                return kept
            if not self.rfile.has_data() and not _readable(self.socket, NEXT_REQUEST_WAIT):
                return True


def _readable(sock: socket.socket, seconds: float) -> bool:
    """Whether the socket has something to read within ``seconds``."""
    if seconds <= 0:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        return _wait_readable(sock, seconds)
    except (OSError, ValueError):  # closed meanwhile: the selector's to find out
        return False


if sys.platform != "win32":

    def _wait_readable(sock: socket.socket, seconds: float) -> bool:
        poller = select.poll()  # any descriptor number (select() stops at 1,024)
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(seconds * 1000))

else:

    def _wait_readable(sock: socket.socket, seconds: float) -> bool:
        return bool(select.select([sock], [], [], seconds)[0])  # Windows has no poll


class TimedServer(wsgi.Server):
    """A cheroot WSGI server whose clients each have ``seconds`` for every wait on them. The
    socket timeout (also ``seconds``) covers what cheroot does before a worker has the
    connection (accepting it, the TLS handshake); a worker's connection is blocking, its waits
    bounded by the clocks. Start :attr:`client_clocks` before serving, stop it after."""

    ConnectionClass = _Connection

    def __init__(self, bind: tuple[str, int], app: Any, seconds: float, **options: Any) -> None:
        super().__init__(bind, app, timeout=max(1, round(seconds)), **options)
        self.gateway = _Gateway
        self.client_clocks = ClientClocks(seconds)
