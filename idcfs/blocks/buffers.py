"""The buffers blocks live in: private anonymous mappings, recycled when nobody holds them.

A new mapping costs a page fault per 4 KiB the first time it is written and an unmap when freed;
for a mount streaming a gigabyte that was a quarter of the daemon's CPU. The memory tier gives
the blocks it evicts back here, and the store reads the next bodies into them
(:data:`idcfs.remote.http.Allocate`).
"""

from __future__ import annotations

import mmap
import sys
import threading

from idcfs.remote.http import Buffer

__all__ = ["RECYCLED", "SMALL", "Block", "Buffer", "Recycled", "new_buffer", "part_of", "recycle_if_unreferenced"]

#: A cached block: a buffer the network filled, or bytes (from the disk tier, or a test's store).
Block = bytes | Buffer


def part_of(block: Block | memoryview, start: int, stop: int) -> Block | memoryview:
    """``block[start:stop]`` without a copy where one can be avoided: a cached block is a buffer
    nobody changes, handed out whole or as a view (the FUSE layer copies it once, into the
    kernel's reply)."""
    if start == 0 and stop == len(block):
        return block
    return block[start:stop] if isinstance(block, bytes) else memoryview(block)[start:stop]


#: Below this, a body goes to a ``bytearray``: a mapping of its own would take at least a page
#: (a tiny object's block, 4 KiB for a few hundred bytes: a memory tier of them several times
#: its size), for bytes zeroed in microseconds.
SMALL = 64 << 10


def new_buffer(size: int) -> Buffer:
    """A buffer for ``size`` bytes of a body (its old contents are to be overwritten): one
    recycled, else one whose pages the kernel provides, zeroed, when they are first written: by
    ``recv``, with the GIL released. (``bytearray(size)`` zeroes them itself, holding the GIL:
    for a megabyte, 256 page faults every other thread waits out.) A small body's is a
    ``bytearray`` (:data:`SMALL`)."""
    if size < SMALL:
        return bytearray(size)
    recycled = RECYCLED.take(size)
    if recycled is not None:
        return recycled
    return _anonymous(size)


if sys.platform != "win32" and hasattr(mmap, "MAP_PRIVATE"):

    def _anonymous(size: int) -> mmap.mmap:
        # Private: a shared anonymous mapping is shmem, whose pages cost a third more to fault in.
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)

else:

    def _anonymous(size: int) -> mmap.mmap:
        # Windows: an anonymous mapping backed by the paging file (no flags to give), zeroed too.
        return mmap.mmap(-1, size)


class Recycled:
    """Block buffers nobody refers to any more, kept for the next body of the same size, up to
    ``max_bytes``. A new mapping costs a page fault per 4 KiB the first time it is written, and
    an unmap when freed (about 0.45 ms a MiB here: a quarter of the daemon's CPU on a 1 GB
    object read at random); a recycled one costs neither."""

    def __init__(self, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._free: dict[int, list[mmap.mmap]] = {}
        self._bytes = 0
        self.max_bytes = max_bytes
        self.reused = 0
        self._taken = False  # since the last release_idle

    def take(self, size: int) -> mmap.mmap | None:
        with self._lock:
            free = self._free.get(size)
            if not free:
                return None
            self._bytes -= size
            self.reused += 1
            self._taken = True
            return free.pop()

    def release_idle(self) -> int:
        """Unmap the spare buffers if none was taken since the last call: a mount gone quiet
        keeps no spare memory. The bytes released."""
        with self._lock:
            if self._taken:
                self._taken = False
                return 0
            free, released = self._free, self._bytes
            self._free, self._bytes = {}, 0
        for buffers in free.values():
            for buffer in buffers:
                buffer.close()  # the pool held the only reference (that is how they got here)
        return released

    def give(self, buffer: mmap.mmap) -> None:
        size = len(buffer)
        with self._lock:
            if self._bytes + size <= self.max_bytes:
                self._free.setdefault(size, []).append(buffer)
                self._bytes += size


#: The daemon's one pool (the memory tier hands its evicted blocks here).
RECYCLED = Recycled(64 << 20)


def _references(value: object) -> int:
    return sys.getrefcount(value)


def _one_local() -> int:
    probe = object()
    return _references(probe)


#: What :func:`_references` counts for an object held by one local variable of its caller.
_ONE_LOCAL = _one_local()


def recycle_if_unreferenced(block: object) -> bool:
    """Give ``block`` (held by its caller in one local variable, and by nothing else) to the pool.

    The caller must hold it in exactly one local and nowhere else; then a count of references
    no higher than that proves nobody else holds it: every view of a mapping (a memoryview, a
    ctypes array over it, a slice in a reader's hands, a future's result, the disk writer's
    queue) holds a reference of its own, and nothing can reach the block to take a new one."""
    if isinstance(block, mmap.mmap) and _references(block) <= _ONE_LOCAL + 1:  # + this parameter
        RECYCLED.give(block)
        return True
    return False
