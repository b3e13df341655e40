"""The bytes of an open file as the pieces a server sends: each within one block, handed over as
views of the cached blocks to a server that takes them (no copy), as ``bytes`` to any other.

Both served faces send files this way (a WebDAV GET, a DICOMweb retrieval's parts).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from idcfs.vfs.files import File

#: Set in the environ by a server that sends ``memoryview`` chunks of an answer as they are.
VIEWS = "idcfs.buffer_views"

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
