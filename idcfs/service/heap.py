"""The daemon's C heap: kept from hoarding memory a mount of weeks would otherwise carry.

Two habits of glibc's malloc cost a FUSE daemon memory it never uses again:

- With a dynamic mmap threshold, a freed 1 MiB block raises the threshold, later blocks come
  from per-thread arenas (64 FUSE threads, 16 fetchers), and freed ones stay there: the soak
  saw RSS creep 250 MB over 15 minutes with a 16 MB block cache. The threshold is fixed, and
  four arenas bound how many heaps hold free space. It is fixed just above 1 MiB, libfuse's
  largest read reply: below, each reply buffer was a new mapping, 256 page faults a read
  (half the faults of a 500 MB ``dd``, ~0.2 s of CPU); now the buffers are reused, and the
  top of an arena is trimmed only by the trimmer. Blocks of 64 KiB and more are never
  malloc'd (they are mappings of their own, :func:`idcfs.blocks.buffers.new_buffer`); a tiny
  object's block is a small allocation like any other.
- Free space inside an arena goes back to the system only at the arena's top. libfuse keeps a
  small node for every file the kernel has looked up, and a ``find`` over 500,000 files leaves
  them strewn among freed readdir buffers and request temporaries: ~40 MB of holes. The
  :class:`Trimmer` hands whole free pages back (``malloc_trim``) every few seconds.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Allocations of this size and more are mapped on their own (and unmapped when freed).
MMAP_THRESHOLD = (1 << 20) + (64 << 10)
#: Free space at an arena's top kept for the next allocations (the trimmer returns it).
TRIM_THRESHOLD = 32 << 20
ARENAS = 4
#: Seconds between two trims of the heap.
TRIM_INTERVAL = 5.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


def bound_heap() -> None:
    """Fix the mmap threshold and the number of arenas (before threads start allocating)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        libc.mallopt(_M_ARENA_MAX, ARENAS)


def release_freed() -> None:
    """Give the heap's whole free pages back to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class Trimmer:
    """A thread calling :func:`release_freed` (and each of ``also``: other spare memory handed
    back) every ``interval`` seconds until :meth:`close`."""

    def __init__(self, interval: float = TRIM_INTERVAL, also: tuple[Callable[[], object], ...] = ()) -> None:
        self._interval = interval
        self._also = also
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idcfs-heap-trim", daemon=True)

    def start(self) -> None:
        if _libc() is not None:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                for release in self._also:
                    release()
                release_freed()
            except Exception:  # noqa: BLE001 - memory held longer is no reason to stop serving
                log.debug("malloc_trim failed", exc_info=True)
                return

    def close(self) -> None:
        self._stop.set()
