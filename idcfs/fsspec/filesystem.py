"""The ``idc://`` face: fsspec's ``AbstractFileSystem`` translated onto :class:`~idcfs.vfs.vfs.Vfs`.

For Python where a mount is not possible (Colab, macOS and Windows laptops, HPC nodes without
FUSE, containers): the same tree, names, selection options and cache folder as ``idcfs mount``,
read through the same block cache (readahead, series prefetch, whole-object fetches). A file is
read with fsspec's own file class with its caching off (``cache_type="none"``): every read goes
to the core, which caches; this face keeps nothing of its own.

Errors are Python's: a missing path ``FileNotFoundError``, a folder opened ``IsADirectoryError``,
anything that would write ``PermissionError`` (EROFS), a network failure after retries an
``OSError`` saying why (:class:`~idcfs.remote.errors.StoreError`); never partial bytes.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from idcfs.config.sources import tree_options
from idcfs.service.stack import open_tree
from idcfs.vfs.files import File
from idcfs.vfs.vfs import Vfs

#: What fsspec's file asks of the core per read, at least (the core's blocks are larger).
READ_BLOCK = 1 << 20


def _read_only(path: str) -> PermissionError:
    return PermissionError(errno.EROFS, "idc:// is read-only (IDC's objects never change)", path)


class IdcFileSystem(AbstractFileSystem):
    """``fsspec.filesystem("idc", source="gcs", collection=["nlst"], cache_dir=..., ...)``: the
    keyword options are ``idcfs mount``'s, by their config key, checked against the same table
    (unknown ones get the same "did you mean")."""

    protocol = ("idc",)
    root_marker = ""
    cachable = True  # one instance (one tree, one cache) per set of options in a process

    def __init__(self, **options: Any) -> None:
        fsspec_options = {
            key: options.pop(key) for key in ("skip_instance_cache", "use_listings_cache") if key in options
        }
        super().__init__(**fsspec_options)
        self._options = tree_options(options, origin="idc://")  # checked now; the tree is built at first use
        self._vfs_lock = threading.Lock()
        self._vfs: Vfs | None = None

    @property
    def vfs(self) -> Vfs:
        """The tree, built at first use (a catalog snapshot loads in a fraction of a second)."""
        with self._vfs_lock:
            if self._vfs is None:
                self._vfs = open_tree(self._options, where="idc://")
            return self._vfs

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = os.fspath(path) if not isinstance(path, str) else path
        text = text.removeprefix("idc://").removeprefix("idc::")
        return text.strip("/")

    # -- the tree -------------------------------------------------------------------------------

    def _details(self, path: str, is_dir: bool, size: int) -> dict[str, Any]:
        return {"name": path, "size": size, "type": "directory" if is_dir else "file"}

    def info(self, path: Any, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        entry = self.vfs.stat(path)
        details = self._details(path, entry.is_dir, entry.size)
        details["mtime"] = entry.mtime_ns / 1e9
        if not path.startswith(".idcfs"):
            details.update(self.vfs.xattrs(path))  # the user.idc.* metadata, from the catalog and listing
        return details

    def ls(self, path: Any, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        prefix = f"{path}/" if path else ""
        if not detail:
            return [prefix + name for name, _ in self.vfs.list(path)]
        return [self._details(prefix + name, is_dir, size) for name, is_dir, size in self.vfs.list_sized(path)]

    def exists(self, path: Any, **kwargs: Any) -> bool:
        try:
            self.vfs.stat(self._strip_protocol(path))
        except FileNotFoundError:
            return False
        return True

    def path(self, identifier: str) -> list[str]:
        """The folders of a SeriesInstanceUID, StudyInstanceUID, PatientID or crdc_series_uuid,
        as ``idcfs path`` prints them ([] when the tree holds none)."""
        try:
            opened = self.vfs.open(f".idcfs/by-id/{identifier}")
        except FileNotFoundError:
            return []
        try:
            return bytes(opened.read(0, opened.size)).decode().splitlines()
        finally:
            opened.close()

    # -- reading --------------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> IdcFile:
        path = self._strip_protocol(path)
        if mode != "rb":
            raise _read_only(path)
        return IdcFile(self, path, self.vfs.open(path), block_size)

    def cat_file(self, path: Any, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        opened = self.vfs.open(path)
        try:
            first, last = _span(opened.size, start, end)
            return bytes(opened.read(first, last - first)) if last > first else b""
        finally:
            opened.close()

    # -- everything that would change the tree --------------------------------------------------

    def _refuse(self, path: Any = "", *args: Any, **kwargs: Any) -> Any:
        raise _read_only(self._strip_protocol(path) if isinstance(path, (str, os.PathLike)) else "")

    mkdir = makedirs = rmdir = rm_file = _rm = rm = touch = mv = cp_file = pipe_file = put_file = _refuse


def _span(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """fsspec's ``start``/``end`` (negative from the end, None for the ends) as [first, last)."""
    first = 0 if start is None else (max(0, size + start) if start < 0 else min(start, size))
    last = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    return first, last


class IdcFile(AbstractBufferedFile):
    """A file of the tree: fsspec's file interface (seek, read, readinto, context manager), each
    read fetched through the core's block cache."""

    def __init__(self, fs: IdcFileSystem, path: str, opened: File, block_size: int | None) -> None:
        self._opened = opened
        super().__init__(fs, path, mode="rb", block_size=block_size or READ_BLOCK, cache_type="none", size=opened.size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        first, last = _span(self.size, start, end)
        return bytes(self._opened.read(first, last - first)) if last > first else b""

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._opened.close()
