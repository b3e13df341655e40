"""The FUSE operations: a thin translation from paths to the tree, listings and the reader.

Everything is read-only and immutable, so every write-type operation answers EROFS, and the
kernel is told to cache attributes, entries, misses and file pages for a long time. Failures
become errnos here and nowhere else: unknown name -> ENOENT (no network), network failure after
retries -> EIO with one log line, never a traceback at the caller.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import mfusepy

from idcfs.cache import BlockCache, ListingCache
from idcfs.layout import escape_name
from idcfs.reader import ObjectRef, Reader
from idcfs.store import NotFoundError, ObjectInfo, Store, StoreError, object_url
from idcfs.tree import Node, Tree

log = logging.getLogger(__name__)

#: Seconds the kernel may cache attributes, names and misses: IDC objects never change.
KERNEL_CACHE_TIMEOUT = 24 * 3600.0

XATTR_PREFIX = "user.idc."

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class SeriesListing:
    """The files of one series folder: escaped names, sorted, and their objects."""

    names: list[str]
    objects: dict[str, ObjectInfo]


def _errors_to_errno(method: F) -> F:
    """Map our exceptions to errnos, so no traceback ever reaches mfusepy's generic handler."""

    @functools.wraps(method)
    def wrapper(self: IdcFs, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except StoreError:  # already logged once, with the object and the reason
            raise mfusepy.FuseOSError(errno.EIO) from None
        except Exception:
            log.exception("internal error in %s%r", method.__name__, args[:1])
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _read_only(*_args: Any, **_kwargs: Any) -> int:
    raise mfusepy.FuseOSError(errno.EROFS)


class IdcFs(mfusepy.Operations):
    """Operations over a :class:`Tree` (directories) and a :class:`Store` (series contents)."""

    use_ns = True

    def __init__(
        self,
        tree: Tree,
        store: Store,
        cache: BlockCache,
        block_size: int,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.tree = tree
        self.catalog = tree.catalog
        self.store = store
        self.reader = Reader(store, cache, block_size)
        self.listings: ListingCache[SeriesListing] = ListingCache()
        self._on_ready = on_ready
        self.ready = False  # set once the kernel has completed the FUSE handshake
        self._uid, self._gid = os.getuid(), os.getgid()
        self._handles: dict[int, ObjectRef] = {}
        self._handles_lock = threading.Lock()
        self._next_handle = 1
        series = self.catalog.series
        self._uuid = series.column("crdc_series_uuid")
        self._bucket = series.column("aws_bucket")
        self._total_bytes = int(sum(v or 0 for v in series.column("series_size_MB").to_pylist()) * 1e6)
        self._release_ns = int(self.catalog.release_time() * 1e9)

    # -- lifecycle ----------------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        if config_3 is not None:
            config_3.entry_timeout = KERNEL_CACHE_TIMEOUT
            config_3.attr_timeout = KERNEL_CACHE_TIMEOUT
            config_3.negative_timeout = KERNEL_CACHE_TIMEOUT
            config_3.kernel_cache = 1
        self.ready = True
        if self._on_ready is not None:
            self._on_ready()

    # -- path resolution ----------------------------------------------------------------------

    def _resolve(self, path: str) -> tuple[Node, str | None]:
        """The directory node of ``path``, and the file name when ``path`` is a file in a series."""
        parts = [p for p in path.split("/") if p]
        if len(parts) <= self.tree.depth:
            node = self.tree.lookup(parts)
            if node is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            return node, None
        if len(parts) == self.tree.depth + 1:
            node = self.tree.lookup(parts[:-1])
            if node is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            return node, parts[-1]
        raise mfusepy.FuseOSError(errno.ENOENT)

    def _series_uuid(self, row: int) -> str:
        return self._uuid[row].as_py()

    def _series_bucket(self, row: int) -> str:
        return self._bucket[row].as_py()

    def _listing(self, row: int) -> SeriesListing:
        uuid = self._series_uuid(row)

        def fetch() -> SeriesListing:
            try:
                objects = self.store.list_series(self._series_bucket(row), uuid)
            except NotFoundError:
                objects = []
            if not objects:
                log.warning(
                    "series %s has no objects in %s",
                    uuid,
                    object_url(self.store.source, self._series_bucket(row), uuid + "/"),
                )
            by_name = {escape_name(o.name): o for o in objects}
            return SeriesListing(names=sorted(by_name), objects=by_name)

        return self.listings.get_or_fetch(uuid, fetch)

    def _file(self, node: Node, name: str) -> ObjectInfo:
        info = self._listing(node.index).objects.get(name)
        if info is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return info

    def _series_time_ns(self, row: int) -> int:
        version = self.catalog.series.column("series_revised_idc_version")[row].as_py()
        return int(self.catalog.release_time(version) * 1e9)

    # -- attributes ---------------------------------------------------------------------------

    @_errors_to_errno
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        node, name = self._resolve(path)
        if name is None:
            when = self._series_time_ns(node.index) if self.tree.is_series(node) else self._release_ns
            return self._stat(stat.S_IFDIR | 0o555, 0, when, nlink=2 + self.tree.num_children(node))
        if not self.tree.is_series(node):
            raise mfusepy.FuseOSError(errno.ENOENT)
        info = self._file(node, name)
        return self._stat(stat.S_IFREG | 0o444, info.size, self._series_time_ns(node.index), nlink=1)

    def _stat(self, mode: int, size: int, when_ns: int, nlink: int) -> dict[str, Any]:
        return {
            "st_mode": mode,
            "st_nlink": nlink,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": self.reader.block_size,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_atime": when_ns,
            "st_mtime": when_ns,
            "st_ctime": when_ns,
        }

    @_errors_to_errno
    def readdir(self, path: str, fh: Any) -> Iterator[tuple[str, dict[str, int], int]]:
        node, name = self._resolve(path)
        if name is not None:
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        if self.tree.is_series(node):
            names, mode = self._listing(node.index).names, stat.S_IFREG
        else:
            names, mode = list(self.tree.children(node)), stat.S_IFDIR
        entries = [(".", {"st_mode": stat.S_IFDIR}, 0), ("..", {"st_mode": stat.S_IFDIR}, 0)]
        entries.extend((entry, {"st_mode": mode}, 0) for entry in names)
        return iter(entries)

    @_errors_to_errno
    def statfs(self, path: str) -> dict[str, int]:
        block = self.reader.block_size
        return {
            "f_bsize": block,
            "f_frsize": block,
            "f_blocks": self._total_bytes // block,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": self.catalog.num_series,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    # -- extended attributes ------------------------------------------------------------------

    def _xattrs(self, path: str) -> dict[str, str]:
        node, name = self._resolve(path)
        if not self.tree.is_series(node):
            return {}
        row = node.index
        series = self.catalog.series
        uuid, bucket = self._series_uuid(row), self._series_bucket(row)
        values = {
            "crdc_series_uuid": uuid,
            "url": object_url(self.store.source, bucket, f"{uuid}/*"),
            "license": series.column("license_short_name")[row].as_py(),
            "source_doi": series.column("source_DOI")[row].as_py(),
            "collection_id": series.column("collection_id")[row].as_py(),
            "modality": series.column("Modality")[row].as_py(),
            "instance_count": series.column("instanceCount")[row].as_py(),
            "series_revised_idc_version": series.column("series_revised_idc_version")[row].as_py(),
        }
        if name is not None:
            info = self._file(node, name)
            values["url"] = object_url(self.store.source, bucket, f"{uuid}/{info.name}")
            values["crdc_instance_uuid"] = info.name.removesuffix(".dcm")
            values["etag"] = info.etag
        return {XATTR_PREFIX + key: str(value) for key, value in values.items() if value not in (None, "")}

    @_errors_to_errno
    def listxattr(self, path: str) -> list[str]:
        return list(self._xattrs(path))

    @_errors_to_errno
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self._xattrs(path).get(name)
        if value is None:
            raise mfusepy.FuseOSError(mfusepy.ENOATTR)
        return value.encode()

    # -- reading ------------------------------------------------------------------------------

    @_errors_to_errno
    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise mfusepy.FuseOSError(errno.EROFS)
        node, name = self._resolve(path)
        if name is None:
            raise mfusepy.FuseOSError(errno.EISDIR)
        if not self.tree.is_series(node):
            raise mfusepy.FuseOSError(errno.ENOENT)
        info = self._file(node, name)
        ref = ObjectRef(self._series_bucket(node.index), f"{self._series_uuid(node.index)}/{info.name}", info.size)
        with self._handles_lock:
            handle = self._next_handle
            self._next_handle += 1
            self._handles[handle] = ref
        return handle

    @_errors_to_errno
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        ref = self._handles.get(fh)
        if ref is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return self.reader.read(ref, offset, size)

    @_errors_to_errno
    def release(self, path: str, fh: int) -> int:
        with self._handles_lock:
            self._handles.pop(fh, None)
        return 0

    @_errors_to_errno
    def opendir(self, path: str) -> int:
        node, name = self._resolve(path)
        if name is not None:
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return 0

    @_errors_to_errno
    def access(self, path: str, amode: int) -> int:
        self._resolve(path)
        if amode & os.W_OK:
            raise mfusepy.FuseOSError(errno.EROFS)
        return 0

    # -- everything that would change the tree ------------------------------------------------

    chmod = chown = create = link = mkdir = mknod = rename = rmdir = _read_only
    setxattr = removexattr = symlink = truncate = unlink = utimens = write = _read_only
