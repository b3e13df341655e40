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

import atexit
import errno
import os
import sys
import threading
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from idcfs.config.sources import tree_options
from idcfs.derived.kinds import series_folder_of
from idcfs.service.stack import open_tree
from idcfs.service.warm import WarmResult, read_files
from idcfs.util.sizes import binary_size
from idcfs.vfs.files import File
from idcfs.vfs.vfs import Vfs

#: What fsspec's file asks of the core per read, at least (the core's blocks are larger).
READ_BLOCK = 1 << 20
#: What one read of ``prefetch`` asks for: the core's readahead makes it sequential and wide.
PREFETCH_CHUNK = 8 << 20
#: Ranges of ``cat_ranges`` read at once (each a blocking read of the core when cold).
RANGE_READERS = 8


def _read_only(path: str) -> PermissionError:
    return PermissionError(errno.EROFS, "idc:// is read-only (IDC's objects never change)", path)


#: At the interpreter's exit, blocks still queued for the disk cache get this long to be written.
EXIT_FLUSH_SECONDS = 10.0


def _flush_at_exit(tree: weakref.ref[Vfs], pid: int) -> None:
    """A script that read files and ends finds them in the cache next time: the disk writer's
    queue is written before the interpreter goes (bounded; never in a forked child, whose copy
    of the tree has no writer thread)."""
    vfs = tree()
    if vfs is not None and os.getpid() == pid:
        vfs.flush(EXIT_FLUSH_SECONDS)


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
        self._forget_tree()

    def _forget_tree(self) -> None:
        self._pid = os.getpid()
        self._vfs_lock = threading.Lock()
        self._vfs: Vfs | None = None

    @property
    def vfs(self) -> Vfs:
        """The tree, built at first use (a catalog snapshot loads in a fraction of a second).

        A forked child (a DataLoader's or a process pool's worker) gets a tree of its own: the
        parent's threads do not exist in it, and its locks may be held by one of them."""
        if self._pid != os.getpid():
            self._forget_tree()
        with self._vfs_lock:
            if self._vfs is None:
                self._vfs = open_tree(self._options, where="idc://")
                atexit.register(_flush_at_exit, weakref.ref(self._vfs), os.getpid())
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

    def modified(self, path: Any) -> datetime:
        return datetime.fromtimestamp(self.vfs.stat(self._strip_protocol(path)).mtime_ns / 1e9, tz=timezone.utc)

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
            return _read_span(opened, start, end)
        finally:
            opened.close()

    def cat(self, path: Any, recursive: bool = False, on_error: str = "raise", **kwargs: Any) -> Any:
        """fsspec's ``cat``, with many files read ``RANGE_READERS`` at a time (fsspec's own reads
        them one after another in a filesystem that is not async)."""
        paths = self.expand_path(path, recursive=recursive)
        if len(paths) == 1 and not isinstance(path, list) and paths[0] == self._strip_protocol(path):
            return self.cat_file(paths[0])
        files = [name for name in paths if not self.isdir(name)]
        read = self.cat_ranges(files, None, None, on_error="raise" if on_error == "raise" else "return")
        return {
            name: data
            for name, data in zip(files, read, strict=True)
            if not (on_error == "omit" and isinstance(data, Exception))
        }

    def cat_ranges(
        self,
        paths: list[Any],
        starts: int | list[int | None] | None,
        ends: int | list[int | None] | None,
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[bytes | Exception]:
        """Many ranges (zarr's chunks, kerchunk's references, a slide's tiles) read
        ``RANGE_READERS`` at a time, each file opened once. With ``on_error="return"`` (fsspec's
        default) a range that fails is its exception in the list; otherwise the first failure
        is raised. ``max_gap`` is accepted and ignored: the core's blocks already merge nearby
        ranges into one request."""
        count = len(paths)
        starts_list = starts if isinstance(starts, list) else [starts] * count
        ends_list = ends if isinstance(ends, list) else [ends] * count
        if not (len(starts_list) == len(ends_list) == count):
            raise ValueError("cat_ranges: paths, starts and ends differ in length")
        names = [self._strip_protocol(path) for path in paths]
        opened: dict[str, File | Exception] = {}
        for name in dict.fromkeys(names):
            try:
                opened[name] = self.vfs.open(name)
            except (OSError, ValueError) as error:
                opened[name] = error

        def one(k: int) -> bytes | Exception:
            handle = opened[names[k]]
            try:
                if isinstance(handle, Exception):
                    raise handle
                return _read_span(handle, starts_list[k], ends_list[k])
            except (OSError, ValueError) as error:
                if on_error != "return":
                    raise
                return error

        try:
            with ThreadPoolExecutor(min(RANGE_READERS, max(1, count))) as pool:
                return list(pool.map(one, range(count)))
        finally:
            for handle in opened.values():
                if not isinstance(handle, Exception):
                    handle.close()

    def prefetch(
        self, path: Any | Iterable[Any], *, jobs: int = 8, force: bool = False, progress: bool | None = None
    ) -> WarmResult:
        """Read every file under ``path`` (a file, a series or any folder above; or a list of
        them) into the disk cache, so that later reads in this process, in another, or through
        a mount on the same cache folder need no request. A byte bar shows progress on a
        terminal or in a notebook (``progress`` forces it on or off). Refuses, before reading,
        what would not fit in the disk cache, unless ``force``. A file that fails is listed in
        the result's ``failures``; the rest are still read."""
        roots = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        files: dict[str, int] = {}
        for root in roots:
            name = self._strip_protocol(root)
            entry = self.vfs.stat(name)
            if entry.is_dir:
                files.update(self._files_under(name))
            else:
                files[name] = entry.size
        total, capacity = sum(files.values()), self.vfs.stats()["cache"]["disk"]["capacity"]
        if not force and capacity and total > capacity:
            raise OSError(
                errno.ENOSPC,
                f"{binary_size(total)} would not fit in the disk cache ({binary_size(capacity)}): choose less, "
                "give a larger cache_size, or prefetch(..., force=True)",
            )
        from tqdm.auto import tqdm

        show = progress if progress is not None else (sys.stderr.isatty() or "ipykernel" in sys.modules)
        return read_files(sorted(files.items()), self._read_whole, jobs, tqdm, show_bar=show)

    def _files_under(self, folder: str) -> dict[str, int]:
        """Every file under ``folder`` with its size, listing each folder once; the ``.nifti``
        folders of ``volumes=True`` inside are left out (listing one builds its volume: a
        prefetch of DICOM must not start hundreds of builds; prefetch a ``.nifti`` folder itself
        to get it)."""
        files: dict[str, int] = {}
        folders = [folder]
        while folders:
            at = folders.pop()
            for name, is_dir, size in self.vfs.list_sized(at):
                path = f"{at}/{name}" if at else name
                if not is_dir:
                    files[path] = size
                elif series_folder_of(name) is None:
                    folders.append(path)
        return files

    def _read_whole(self, path: str) -> int:
        opened = self.vfs.open(path)
        try:
            offset = 0
            while offset < opened.size:
                offset += len(opened.read(offset, min(PREFETCH_CHUNK, opened.size - offset)))
            return offset
        finally:
            opened.close()

    # -- everything that would change the tree --------------------------------------------------

    def _refuse(self, path: Any = "", *args: Any, **kwargs: Any) -> Any:
        raise _read_only(self._strip_protocol(path) if isinstance(path, (str, os.PathLike)) else "")

    mkdir = makedirs = rmdir = rm_file = _rm = rm = touch = mv = cp_file = pipe_file = put_file = _refuse


def _read_span(opened: File, start: int | None, end: int | None) -> bytes:
    first, last = _span(opened.size, start, end)
    return bytes(opened.read(first, last - first)) if last > first else b""


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
        return _read_span(self._opened, start, end)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._opened.close()
