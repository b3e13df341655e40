"""How an answer's bytes reach the client's socket: whole, without copies, the head with the
first bytes of the body.

cheroot's socket writer copies each chunk into its buffer, then what is left of the buffer again
before every send, of which the kernel may take a part; and it sends a response's head on its
own, a system call (and on loopback, the receiver's wake-up) per answer for a few hundred bytes.
The share sends a chunk straight from the cached block, and a head held back goes out with the
body's first chunk in one call where the socket can gather (``sendmsg``: POSIX, not TLS).
"""

from __future__ import annotations

import socket
import ssl
import sys
from typing import Any

#: A chunk this small goes out joined to the head (one copy of at most this many bytes).
JOIN_LIMIT = 16 << 10


def send(sock: socket.socket, chunk: Any, head: bytes = b"") -> None:
    """``head`` then ``chunk`` (bytes or a buffer), whole, or the socket's error."""
    if not head:
        sock.sendall(chunk)
        return
    view = memoryview(chunk).cast("B")
    if len(view) <= JOIN_LIMIT:
        sock.sendall(head + view)
        return
    sent = _gather(sock, head, view)
    if sent is None:
        sock.sendall(head)
        sock.sendall(view)
        return
    if sent < len(head):
        sock.sendall(memoryview(head)[sent:])
        sent = len(head)
    sock.sendall(view[sent - len(head) :])


if sys.platform != "win32":

    def _gather(sock: socket.socket, head: bytes, view: memoryview) -> int | None:
        """Bytes sent of ``head`` and ``view`` by one call, or None where a socket cannot gather."""
        if isinstance(sock, ssl.SSLSocket):
            return None
        return sock.sendmsg([head, view])

else:

    def _gather(sock: socket.socket, head: bytes, view: memoryview) -> int | None:
        return None  # Windows' sockets have no sendmsg
