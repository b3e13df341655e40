"""A lock between processes sharing a cache folder: two mounts (or a mount and ``idc://``)
asked for one volume build it once. Held by an open file, so a process that dies lets go."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

_POLL = 0.05

if sys.platform == "win32":  # a byte-range lock on the file's first byte
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    try:
        import fcntl
    except ImportError:  # no way to lock (tests that take fcntl away): each process builds its own
        fcntl = None  # type: ignore[assignment]

    def _try_lock(fd: int) -> bool:
        if fcntl is None:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive(path: Path, timeout: float) -> Iterator[None]:
    """Hold the lock named by ``path`` (created if need be); TimeoutError after ``timeout`` s."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        give_up = time.monotonic() + timeout
        while not _try_lock(fd):
            if time.monotonic() > give_up:
                raise TimeoutError(f"{path} is held by another process for longer than {timeout:g}s")
            time.sleep(_POLL)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)
