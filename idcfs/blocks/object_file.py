"""An object read through the block cache as a Python binary file: what pydicom reads a header
from (a volume's SEG, a series' instance headers)."""

from __future__ import annotations

import io
from typing import Any

from idcfs.blocks.reader import ObjectRef, Reader


class ObjectFile(io.RawIOBase):
    """``ref``'s bytes through ``reader``; seekable, unbuffered (wrap it for small reads)."""

    def __init__(self, reader: Reader, ref: ObjectRef) -> None:
        self._reader, self._ref, self._at = reader, ref, 0
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

    def readinto(self, into: Any) -> int:
        data = self._reader.read(self._ref, self._at, len(into))
        into[: len(data)] = data
        self._at += len(data)
        return len(data)
