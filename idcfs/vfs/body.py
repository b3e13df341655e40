"""The bytes of an open file as the pieces a server sends: each within one block, handed over as
views of the cached blocks to a server that takes them (no copy), as ``bytes`` to any other.

Both served faces send files this way (a WebDAV GET, a DICOMweb retrieval's parts).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from idcfs.vfs.files import File

#: Set in the environ by a server that sends ``memoryview`` chunks of an answer as they are.
VIEWS = "idcfs.buffer_views"
#: Set in the environ by a server that can cut an answer short: a callable that ends its
#: connection, so an answer that fails midway reaches its client broken, never whole but short.
CUT_SHORT = "idcfs.cut_short"

#: The most of a body one chunk holds: a chunk of a block still arriving is sent as soon as its
#: own bytes are in (blocks/landing.py), so a cold file's first bytes leave before its last come.
PIECE = 256 << 10


class FileBody:
    """The bytes ``[first, first + length)`` of an open file, in pieces that each lie in one block
    (a piece spanning two would be joined: a copy); closes the file when the server is done with
    it, also when the client went away."""

    def __init__(self, opened: File, first: int, length: int, block_size: int, views: bool) -> None:
        self._opened = opened
        self._first = first
        self._length = length
        self._block = block_size
        self._views = views

    def __iter__(self) -> Iterator[Any]:
        # Closed here as well as by the server: wsgidav's ErrorPrinter, which wraps this body,
        # drops it without calling close() when the client goes away mid-answer; the generator's
        # finalisation still runs this ``finally`` (File.close is idempotent).
        try:
            position, end = self._first, self._first + self._length
            while position < end:
                size = min(end - position, PIECE, self._block - position % self._block)
                data = self._opened.read(position, size)
                if not len(data):
                    raise OSError(f"the file ended at {position} of {end} bytes")  # never a short answer
                position += len(data)
                yield memoryview(data) if self._views else bytes(data)
        finally:
            self.close()

    def close(self) -> None:
        self._opened.close()


class FileStream(io.RawIOBase):
    """An open file of the tree as a Python binary file: what wsgidav streams (and seeks, for a
    Range), what pydicom reads a header from.

    Unbuffered: wsgidav reads its chunk size at a time, and each read is one copy out of the
    cached block (a buffer in front would copy every byte twice more)."""

    def __init__(self, opened: File) -> None:
        self._opened = opened
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._opened.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._opened.size - self._position)
        data = bytes(self._opened.read(self._position, size))  # WSGI bodies are bytes
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._opened.read(self._position, len(view))
        count = len(data)
        view[:count] = data
        self._position += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._opened.close()
        super().close()
