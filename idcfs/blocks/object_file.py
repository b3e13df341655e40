"""An object as a Python binary file: what pydicom reads a header from (a volume's SEG, a
series' instance headers). Through the block cache (:class:`ObjectFile`: shared, kept), or
straight from the store (:class:`StoreFile`: bytes read once, in the reading thread).
"""

from __future__ import annotations

import io
from typing import Any

from idcfs.blocks.reader import ObjectRef, Reader
from idcfs.remote.http import Buffer
from idcfs.remote.store import Store


class _ObjectAsFile(io.RawIOBase):
    """Seekable and unbuffered over ``ref``'s bytes (wrap it for small reads)."""

    def __init__(self, ref: ObjectRef) -> None:
        self._ref, self._at = ref, 0
        self.name = ref.key  # pydicom names what it reads after it

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._at, 2: self._ref.size}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at


class ObjectFile(_ObjectAsFile):
    """``ref``'s bytes through ``reader`` (its block cache: shared with every other reader)."""

    def __init__(self, reader: Reader, ref: ObjectRef) -> None:
        super().__init__(ref)
        self._reader = reader

    def readinto(self, into: Any) -> int:
        data = self._reader.read(self._ref, self._at, len(into))
        into[: len(data)] = data
        self._at += len(data)
        return len(data)


class StoreFile(_ObjectAsFile):
    """``ref``'s bytes straight from ``store``, ``block_size`` at a time in the reading thread,
    each block fetched once and kept while the file is open: for bytes read once (a series'
    headers, kept on disk after), where the block cache's sharing, and the hand-over to its
    fetching threads, would cost more than they save."""

    def __init__(self, store: Store, ref: ObjectRef, block_size: int) -> None:
        super().__init__(ref)
        self._store, self._block_size = store, block_size
        self._blocks: dict[int, Buffer] = {}

    def readinto(self, into: Any) -> int:
        if self._at >= self._ref.size:
            return 0
        index, offset = divmod(self._at, self._block_size)
        block = self._blocks.get(index)
        if block is None:
            begin = index * self._block_size
            length = min(self._ref.size, begin + self._block_size) - begin
            ref = self._ref
            block = self._blocks[index] = self._store.get_blocks(ref.aws_bucket, ref.key, begin, [length])[0]
        count = min(len(into), len(block) - offset)
        into[:count] = memoryview(block)[offset : offset + count]
        self._at += count
        return count

    def close(self) -> None:
        self._blocks.clear()
        super().close()
