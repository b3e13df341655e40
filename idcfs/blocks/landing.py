"""A block on its way in, for demand reads that need only part of it.

A header read wants the first kilobytes of a block; on a slow link the whole block takes a
transfer time longer (1 MiB at 100 Mbit/s: 80 ms). The fetch reports the bytes as they arrive
(:data:`idcfs.remote.http.Arrived`), and a reader whose range is in is answered at once, from a
copy of those bytes; the fetch goes on and the block is cached whole, as before. Bytes below
the arrived count never change (a retry that resumes brings the same bytes, in a new buffer);
a reader never sees a byte the answer did not say was its range's.
"""

from __future__ import annotations

import threading
import time

from idcfs.blocks.buffers import Block, Buffer, part_of
from idcfs.remote.retry import StoreError


class Landing:
    """The arrived bytes of one block, then the block (or the fetch's error)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._condition = threading.Condition()
        self._buffer: Buffer | bytearray | None = None
        self._filled = 0
        self._block: Block | None = None
        self._error: BaseException | None = None

    def arrived(self, buffer: Buffer | bytearray, filled: int) -> None:
        """The fetch's report: ``buffer`` holds the block's first ``filled`` bytes (a count that
        only grows: a retry starting over is not reported until it passes it)."""
        with self._condition:
            if filled > self._filled:
                self._buffer, self._filled = buffer, filled
                self._condition.notify_all()

    def finish(self, block: Block) -> None:
        with self._condition:
            self._block = block
            self._condition.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._condition:
            self._error = error
            self._condition.notify_all()

    def part(self, start: int, stop: int, timeout: float) -> Block | memoryview | bytes:
        """Bytes ``[start, stop)`` as soon as they are in: the block's own (a view) once it is
        whole, a copy before; the fetch's error if it fails first; a ``StoreError`` after
        ``timeout`` seconds."""
        give_up = time.monotonic() + timeout
        with self._condition:
            while True:
                if self._block is not None:
                    return part_of(self._block, start, stop)
                if self._error is not None:
                    raise self._error
                if self._filled >= stop and self._buffer is not None:
                    return bytes(memoryview(self._buffer)[start:stop])
                left = give_up - time.monotonic()
                if left <= 0:
                    raise StoreError(f"{self.key}: gave up waiting {timeout:g}s for its bytes")
                self._condition.wait(left)
