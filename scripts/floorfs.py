#!/usr/bin/env python3
"""The floor of the benchmarks: the most trivial read-only mfusepy file system, serving a local
folder whose files the page cache holds (so: from memory), with the FUSE settings idcfs uses.

Whatever it costs to read through it is the cost of FUSE and the Python binding alone: the
budget idcfs has left is what lies between its figures and these. Run by bench_io.py:
``python scripts/floorfs.py SOURCE MOUNTPOINT`` (foreground; SIGTERM or fusermount3 -u ends it).
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from idcfs.service.mounting import prefer_libfuse3  # noqa: E402 - before mfusepy loads a libfuse

prefer_libfuse3()
import mfusepy  # noqa: E402


class FloorFs(mfusepy.Operations):
    use_ns = True

    def __init__(self, source: Path) -> None:
        self.source = source

    def _path(self, path: str) -> str:
        return str(self.source) + path

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        if config_3 is not None:  # as idcfs: the kernel keeps names, attributes and pages
            config_3.entry_timeout = config_3.attr_timeout = 86400.0
            config_3.kernel_cache = 1

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._path(path))
        except OSError as error:
            raise mfusepy.FuseOSError(error.errno) from None
        keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_atime", "st_mtime", "st_ctime")
        return {key: getattr(st, key + "_ns" if key.endswith("time") else key) for key in keys}

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise mfusepy.FuseOSError(errno.EROFS)
        return os.open(self._path(path), os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


def _raise_readahead(mountpoint: Path) -> None:
    from idcfs.service.mounting import set_kernel_readahead

    for _ in range(20):  # as idcfs does: after the INIT handshake
        time.sleep(0.05)
        if set_kernel_readahead(mountpoint, 1 << 20) is None:
            return


def main() -> int:
    source, mountpoint = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    threading.Thread(target=_raise_readahead, args=(mountpoint,), daemon=True).start()
    mfusepy.FUSE(
        FloorFs(source), str(mountpoint), foreground=True, nothreads=False, ro=True, fsname="floorfs",
        max_threads=64, max_idle_threads=16,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
