"""Turns ``read(offset, size)`` on an object into whole-block fetches through the cache.

Blocks are aligned (``index * block_size``), so any two readers of a region share cache entries
and in-flight fetches. An object no larger than one block is a single whole-object GET. Every
block's length is checked against the object's size from the series listing before it is used:
a short block is an error, never zero-filled bytes. Readahead and series prefetch come later,
behind this same interface.
"""

from __future__ import annotations

from dataclasses import dataclass

from idcfs.cache import BlockCache
from idcfs.store import Store, StoreError

DEFAULT_BLOCK_SIZE = 1 << 20


@dataclass(frozen=True)
class ObjectRef:
    """One object to read: where it is and its exact size (from the series listing)."""

    aws_bucket: str
    key: str
    size: int


class Reader:
    def __init__(self, store: Store, cache: BlockCache, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if block_size <= 0:
            raise ValueError("block size must be positive")
        self.store = store
        self.cache = cache
        self.block_size = block_size

    def read(self, obj: ObjectRef, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` clipped to the object's end."""
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        end = min(obj.size, offset + size)
        if offset >= end:
            return b""
        first, last = offset // self.block_size, (end - 1) // self.block_size
        pieces = []
        for index in range(first, last + 1):
            block = self._block(obj, index)
            block_start = index * self.block_size
            pieces.append(block[max(offset, block_start) - block_start : end - block_start])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _block(self, obj: ObjectRef, index: int) -> bytes:
        start = index * self.block_size
        stop = min(obj.size, start + self.block_size)

        def fetch() -> bytes:
            data = self.store.get_range(obj.aws_bucket, obj.key, start, stop)
            if len(data) != stop - start:  # the store checks too; a cache must never hold a short block
                raise StoreError(f"{obj.key}: block {index} has {len(data)} bytes, expected {stop - start}")
            return data

        return self.cache.get_or_fetch((obj.key, index), fetch)
