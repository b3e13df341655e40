"""The errors of the tree, as the standard library's own ``OSError`` kinds with their errno.

Every face maps them the same way without a table of its own: FUSE answers ``error.errno``,
fsspec raises them as they are (``FileNotFoundError`` is what fsspec's callers catch), WebDAV
turns them into statuses. A network failure after retries is a
:class:`~idcfs.remote.retry.StoreError` (an ``OSError`` without an errno: EIO to a kernel).
"""

from __future__ import annotations

import errno
import os


def not_found(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def not_a_folder(path: str) -> NotADirectoryError:
    return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)


def is_a_folder(path: str) -> IsADirectoryError:
    return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)


class ReadOnlyError(OSError):
    """Anything that would change the tree: IDC is immutable, and so is every face of it."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EROFS, os.strerror(errno.EROFS), path)


class NoSuchAttribute(OSError):
    def __init__(self, path: str, name: str) -> None:
        super().__init__(errno.ENODATA, f"no attribute {name!r}", path)
