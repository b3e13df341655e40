"""Open files of the tree: what a face holds between open and close, and reads ranges from.

A file of a series reads through the block reader (readahead and series prefetch included), and
its first read queues the rest of its series; a control file reads from the bytes it was opened
with (a snapshot, consistent while it is read).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from idcfs.blocks.reader import ObjectRef, Reader, ReadState
from idcfs.util.counters import Counters


class File(Protocol):
    #: Exact size in bytes.
    size: int
    #: Contents that change while served (``/.idcfs/stats``): a face must not cache them.
    live: bool

    def read(self, offset: int, size: int) -> bytes | memoryview | Any:
        """Up to ``size`` bytes from ``offset`` (fewer only at the end): bytes or a buffer the
        caller must not keep past its use (a face copies it into its reply)."""
        ...

    def close(self) -> None: ...


class BytesFile:
    """A control file: its contents as they were at open."""

    def __init__(self, data: bytes | Any, live: bool = False) -> None:
        self._data = data
        self.size = len(data)
        self.live = live

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        return bytes(self._data[offset : offset + size])

    def close(self) -> None:
        self._data = b""


class SeriesFile:
    """An object of a series, read through the block cache."""

    live = False

    def __init__(
        self,
        reader: Reader,
        ref: ObjectRef,
        first_read: Callable[[ObjectRef], None],
        counters: Counters,
        on_close: Callable[[], None],
    ) -> None:
        self._reader = reader
        self.ref = ref
        self.size = ref.size
        self._state = ReadState()
        self._first_read: Callable[[ObjectRef], None] | None = first_read
        self._lock = threading.Lock()
        self._counters = counters
        self._on_close: Callable[[], None] | None = on_close
        self.reads = 0

    def read(self, offset: int, size: int) -> bytes | memoryview | Any:
        if self._first_read is not None:  # the first read of an instance: queue the rest of its series
            with self._lock:
                queue, self._first_read = self._first_read, None
            if queue is not None:
                queue(self.ref)
        data = self._reader.read(self.ref, offset, size, self._state)
        self.reads += 1
        self._counters.add("reads")
        self._counters.add("read_bytes", len(data))
        return data

    def close(self) -> None:
        """Idempotent: a face may close twice (a release after an error)."""
        with self._lock:
            on_close, self._on_close = self._on_close, None
        if on_close is None:
            return
        if self.reads == 0 and self.size:
            self._counters.add("files_without_reads")  # a face's cache served it (or nothing was read)
        on_close()
