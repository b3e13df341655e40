"""mfusepy's FUSE, with what the mount needs of it beyond the stock class.

- direct I/O per open file: the kernel must neither cache nor cut to a cached size a file
  whose contents change (``/.idcfs/stats``);
- ``read`` takes any buffer (a cached block, or a view into one), copied once into libfuse's
  reply, where mfusepy takes only bytes (one more copy of every byte read).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import mfusepy

#: Threads libfuse may run to answer the kernel (each a Python thread mostly waiting on I/O).
FUSE_THREADS = 64
#: Of those, how many may wait idle for the kernel's next request.
FUSE_IDLE_THREADS = 16


def serve_mount(operations: Any, mountpoint: Path, allow_other: bool, kernel_flags: str) -> None:
    """Mount ``operations`` at ``mountpoint`` and answer the kernel until unmounted (libfuse
    raises ``RuntimeError`` with its status when it could not mount, or was stopped by a signal).

    max_threads: libfuse's default is 10 threads answering the kernel, and mfusepy passes an
    invalid value that libfuse ignores with a warning. Reads that wait on the network (a stall,
    a retry) each hold a thread; with 10, a few slow objects stall every other reader."""
    options: dict[str, Any] = {"ro": True, "fsname": "idcfs", "subtype": "idcfs"}
    if (mfusepy.fuse_version_major, mfusepy.fuse_version_minor) >= (3, 12):  # older ones refuse these
        # max_idle_threads too: its default (-1) is what libfuse warns about at every mount.
        options.update(max_threads=FUSE_THREADS, max_idle_threads=FUSE_IDLE_THREADS)
    if allow_other:
        options["allow_other"] = True
    for flag in filter(None, kernel_flags.split(",")):
        options[flag] = True
    DirectIoFUSE(operations, str(mountpoint), foreground=True, nothreads=False, debug=False, **options)


class DirectIoFUSE(mfusepy.FUSE):
    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        data = self.operations.read(None if path is None else path.decode(self.encoding, self.errors), size, offset,
                                    fip.contents.fh)  # fmt: skip
        count = len(data)
        if count > size:
            raise RuntimeError(f"read returned {count} bytes, more than the {size} asked for")
        if count:
            source = data if isinstance(data, bytes) else (ctypes.c_char * count).from_buffer(data)
            ctypes.memmove(buf, source, count)
        return count

    def open(self, path: bytes, fip: Any) -> int:
        result = super().open(path, fip)
        if self.operations.wants_direct_io(fip.contents.fh):
            fip.contents.direct_io = 1
            fip.contents.keep_cache = 0
        return result
