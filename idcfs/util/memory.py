"""How much memory this process may use: the machine's, or less where a container or an HPC
job's cgroup caps it (the machine's figure there is the host's, often many times the job's)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

#: cgroup v2's limit of this process's group, then v1's (a v1 "no limit" is a huge number).
_CGROUP_LIMITS = ("memory.max", "memory/memory.limit_in_bytes")


if sys.platform == "win32":

    def physical_memory() -> int | None:
        """Bytes of RAM of the machine (Windows: ``GlobalMemoryStatusEx``), or None if it fails."""
        import ctypes

        class _Status(ctypes.Structure):
            _fields_ = [
                ("dwLength", ctypes.c_ulong),
                ("dwMemoryLoad", ctypes.c_ulong),
                ("ullTotalPhys", ctypes.c_ulonglong),
                ("ullAvailPhys", ctypes.c_ulonglong),
                ("ullTotalPageFile", ctypes.c_ulonglong),
                ("ullAvailPageFile", ctypes.c_ulonglong),
                ("ullTotalVirtual", ctypes.c_ulonglong),
                ("ullAvailVirtual", ctypes.c_ulonglong),
                ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
            ]

        status = _Status()
        status.dwLength = ctypes.sizeof(_Status)
        if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return None
        return int(status.ullTotalPhys)

else:

    def physical_memory() -> int | None:
        """Bytes of RAM of the machine (Linux, macOS: ``sysconf``), or None where it is not said."""
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None


def cgroup_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup, or None when there is none (or no cgroups).

    Only the group a container or a batch job puts the process in is read (its root, as the
    process sees it): the usual place of the limit, without walking ``/proc/self/cgroup``."""
    for name in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            text = (root / name).read_text().strip()
            if text and text != "max":
                return int(text)
    return None


def usable_memory(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The smaller of the machine's memory and its cgroup's limit; None when neither is known."""
    known = [n for n in (physical_memory(), cgroup_limit(root)) if n is not None and n > 0]
    return min(known) if known else None
