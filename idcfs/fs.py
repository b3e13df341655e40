"""The FUSE operations: a thin translation from paths to the tree, listings and the reader.

Everything is read-only and immutable, so every write-type operation answers EROFS, and the
kernel is told to cache attributes, entries, misses and file pages for a long time. Failures
become errnos here and nowhere else: unknown name -> ENOENT (no network), network failure after
retries -> EIO with one log line, never a traceback at the caller.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import itertools
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mfusepy
import pyarrow.compute as pc
from cachetools import LRUCache

from idcfs.cache import ListingCache
from idcfs.layout import unescape_name
from idcfs.listing import SeriesListing
from idcfs.lookup import find
from idcfs.objects import ObjectInfo, ObjectTable
from idcfs.reader import SERIES, ObjectRef, Reader, ReadState
from idcfs.snapshot import Snapshot
from idcfs.stats import Counters
from idcfs.store import StoreError, object_url
from idcfs.transport import RECYCLED
from idcfs.tree import Node
from idcfs.xattrs import folder_xattrs, series_xattrs

log = logging.getLogger(__name__)

#: Seconds the kernel may cache attributes, names and misses: IDC objects never change.
KERNEL_CACHE_TIMEOUT = 24 * 3600.0

#: Reads the kernel may have in flight at once (the daemon runs up to 64 threads to answer).
FUSE_MAX_BACKGROUND = 48
#: Series rows whose UUID, bucket and time are kept at hand, and folders found by path
#: (a few hundred bytes each).
SERIES_ROWS_KEPT = 4096

#: A folder with more series than this does not get their listings fetched ahead.
MAX_LISTING_PREFETCH = 256

#: The hidden folder describing the mount: ``version`` (what is mounted), ``manifest.txt``
#: (an s5cmd manifest of exactly the mounted series), ``stats`` (live statistics, JSON) and
#: ``by-id/<identifier>`` (the folders of a series, study or patient, one a line).
CONTROL_DIR = ".idcfs"
#: The lookup folder inside it: lists nothing, answers any identifier the mount holds.
BY_ID_DIR = "by-id"
#: Bytes of answers of ``by-id`` kept (a lookup scans the catalog; ``ls`` asks twice).
BY_ID_CACHE_BYTES = 1 << 20
#: Control files whose contents change: rendered at open, read with direct I/O.
LIVE_CONTROL_FILES = ("stats",)


class ControlFolder:
    """A folder of the hidden ``/.idcfs`` (it, and ``by-id`` in it). Not a :class:`Node`: no
    folder of the tree can be taken for it, nor it for one (a sentinel ``Node(-1, 0)`` would
    index arrays with -1)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CONTROL = ControlFolder("CONTROL")
BY_ID = ControlFolder("BY_ID")


F = TypeVar("F", bound=Callable[..., Any])


#: Per entry of a folder's listing kept for the kernel: a 3-tuple, a list slot, its name.
_BYTES_PER_ENTRY = 150
#: Every folder's first two entries.
_DOT_ENTRIES = ((".", stat.S_IFDIR, 0), ("..", stat.S_IFDIR, 0))


def listing_cache(directory: Path | None, max_bytes: int, wait_timeout: float) -> ListingCache:
    """The cache of series listings as the file system uses them."""
    return ListingCache(SeriesListing.of, SeriesListing.approximate_bytes, directory, max_bytes, wait_timeout)


@dataclass
class _Handle:
    """An open file: the object, its readahead state, and its series (for series prefetch)."""

    ref: ObjectRef
    state: ReadState
    series_row: int
    series_queued: bool = False
    reads: int = 0


class DirectIoFUSE(mfusepy.FUSE):
    """mfusepy's FUSE, letting the operations ask for direct I/O per open file: the kernel must
    neither cache nor cut to a cached size a file whose contents change (``/.idcfs/stats``);
    and taking any buffer from ``read`` (a cached block, or a view into one), copied once into
    libfuse's reply, where mfusepy takes only bytes (one more copy of every byte read)."""

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
            self.counters.add("internal_errors")
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
        snapshot: Snapshot,
        reader: Reader,
        listings: ListingCache[SeriesListing],
        entries_bytes: int,
        mount_info: dict[str, Any] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        tree = snapshot.tree
        self.tree = tree
        self.catalog = tree.catalog
        self.mount_info = mount_info or {}
        self._control_files: dict[str, bytes | Any] = {
            "version": (json.dumps(self.mount_info, indent=1, default=str) + "\n").encode(),
            "manifest.txt": snapshot.manifest,
            "stats": b"",  # rendered at each open
        }
        self._started = time.monotonic()
        #: FUSE reads that reached idcfs (the kernel's page cache could not answer them), their
        #: bytes, files closed with no read reaching idcfs, unexpected exceptions.
        self.counters = Counters("reads", "read_bytes", "files_without_reads", "internal_errors")
        self.reader = reader
        self.store = reader.store
        self.listings = listings
        self._on_ready = on_ready
        self.ready = False  # set once the kernel has completed the FUSE handshake
        #: Set at the first request after INIT: the handshake is done in the kernel too.
        self.answering = threading.Event()
        self._uid, self._gid = os.getuid(), os.getgid()
        self._handles: dict[int, _Handle | Any] = {}
        self._direct_io: set[int] = set()
        self._handles_lock = threading.Lock()
        # Entries of recent folders above the series level, ready to hand to the kernel again:
        # libfuse 3.14's high-level API does not pass cache_readdir on, so the kernel asks again
        # on every opendir. Capped in (estimated) bytes: the root of a flat layout alone is a
        # million entries. A series folder's entries come from its listing, never copied here.
        self._entries: LRUCache[Node | ControlFolder, list[tuple[str, int, int]]] = LRUCache(
            maxsize=max(1, entries_bytes // _BYTES_PER_ENTRY), getsizeof=len
        )
        self._entries_lock = threading.Lock()
        self._by_id: LRUCache[str, bytes] = LRUCache(maxsize=BY_ID_CACHE_BYTES, getsizeof=lambda text: len(text) + 64)
        self._by_id_lock = threading.Lock()
        self._ahead: set[str] = set()  # series whose listing is queued or being fetched ahead
        self._ahead_lock = threading.Lock()
        self._next_handle = 1
        series = self.catalog.series
        self._uuid = series.column("crdc_series_uuid")
        self._bucket = series.column("aws_bucket")
        self._revised = series.column("series_revised_idc_version")
        # What each file operation asks of its series row, kept for the series in use: a value
        # out of an Arrow column costs ~20 µs, and a file's lookup, open and reads ask 5-10 times.
        self._series_row = functools.lru_cache(maxsize=SERIES_ROWS_KEPT)(self._read_series_row)
        # The folders of the paths in use (the tree never changes under a mount): each operation
        # on a file resolved its folder again, a binary search per level, 3-4 times a file.
        self._folder = functools.lru_cache(maxsize=SERIES_ROWS_KEPT)(self._lookup_folder)
        self._total_bytes = int((pc.sum(series.column("series_size_MB")).as_py() or 0) * 1e6)
        self._release_ns = int(self.catalog.release_time() * 1e9)

    # -- lifecycle ----------------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        if conn_info is not None:
            # The kernel sends page-cache reads (readahead) as background requests, 12 at a time
            # by default across the whole mount: a few reads waiting on the network then hold
            # every other reader back. Raise it (capped for non-root by max_user_bgreq).
            conn_info.max_background = FUSE_MAX_BACKGROUND
            conn_info.congestion_threshold = FUSE_MAX_BACKGROUND * 3 // 4
        if config_3 is not None:
            config_3.entry_timeout = KERNEL_CACHE_TIMEOUT
            config_3.attr_timeout = KERNEL_CACHE_TIMEOUT
            # No negative entries: libfuse's high-level API has one timeout for every miss, and
            # a miss in a series whose listing was empty (not there yet, or a failed fetch)
            # must be asked again. Misses never need the network, so this costs little.
            config_3.negative_timeout = 0
            config_3.kernel_cache = 1
        self.ready = True
        if self._on_ready is not None:
            self._on_ready()

    # -- path resolution ----------------------------------------------------------------------

    def _resolve(self, path: str) -> tuple[Node | ControlFolder, str | None]:
        """The directory node of ``path``, and the file name when ``path`` is a file in a series.

        The control folder ``/.idcfs`` resolves to ``CONTROL`` (its files to CONTROL and a name).
        """
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == CONTROL_DIR:
            if len(parts) == 1:
                return CONTROL, None
            if len(parts) == 2 and parts[1] in self._control_files:
                return CONTROL, parts[1]
            if parts[1] == BY_ID_DIR and len(parts) <= 3:
                return BY_ID, parts[2] if len(parts) == 3 else None
            raise mfusepy.FuseOSError(errno.ENOENT)
        if len(parts) <= self.tree.depth:
            node = self._folder(tuple(parts))
            if node is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            return node, None
        if len(parts) == self.tree.depth + 1:
            node = self._folder(tuple(parts[:-1]))
            if node is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            return node, parts[-1]
        raise mfusepy.FuseOSError(errno.ENOENT)

    def _lookup_folder(self, parts: tuple[str, ...]) -> Node | None:
        return self.tree.lookup(list(parts))

    def _read_series_row(self, row: int) -> tuple[str, str, int]:
        release = self.catalog.release_time(self._revised[row].as_py())
        return self._uuid[row].as_py(), self._bucket[row].as_py(), int(release * 1e9)

    def _series_uuid(self, row: int) -> str:
        return self._series_row(row)[0]

    def _series_bucket(self, row: int) -> str:
        return self._series_row(row)[1]

    def _listing(self, row: int) -> SeriesListing:
        uuid = self._series_uuid(row)

        def fetch() -> ObjectTable:
            objects = self.store.list_series(self._series_bucket(row), uuid)
            if not objects:
                log.warning(
                    "series %s has no objects in %s (asked again at the next lookup)",
                    uuid,
                    object_url(self.store.source, self._series_bucket(row), uuid + "/"),
                )
            return objects

        return self.listings.get_or_fetch(uuid, fetch)

    def _file(self, node: Node, name: str) -> ObjectInfo:
        info = self._listing(node.index).get(name)
        if info is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return info

    def _series_time_ns(self, row: int) -> int:
        return self._series_row(row)[2]

    # -- attributes ---------------------------------------------------------------------------

    @_errors_to_errno
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if not self.answering.is_set():
            self.answering.set()
        node, name = self._resolve(path)
        if isinstance(node, ControlFolder):
            if name is None:
                return self._stat(stat.S_IFDIR | 0o555, 0, self._release_ns, nlink=2)
            return self._stat(stat.S_IFREG | 0o444, len(self._control_file(node, name)), self._release_ns, nlink=1)
        if name is None:
            if self.tree.is_series(node):
                self._listing_ahead(path, node.index)
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
    def readdir(self, path: str, fh: Any) -> Iterator[tuple[str, int, int]]:
        """Entries with their type (d_type) so ``find`` and ``ls`` need not stat each one.

        The type is given as a bare mode int: mfusepy copies it into the stat with one
        assignment, where a dict costs a loop per entry (a collection has up to 26k patients).
        """
        node, name = self._resolve(path)
        if name is not None:
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        if isinstance(node, Node) and self.tree.is_series(node):
            # From the listing itself, one name at a time: a 92,000-entry folder costs no copy.
            names = self._listing(node.index).entry_names()
            return itertools.chain(_DOT_ENTRIES, ((entry, stat.S_IFREG, 0) for entry in names))
        with self._entries_lock:
            entries = self._entries.get(node)
        if entries is None:
            entries = self._entries_of(node)
            with self._entries_lock, contextlib.suppress(ValueError):  # over the cap: not kept
                self._entries[node] = entries
            self._prefetch_listings(node)
        return iter(entries)

    def _prefetch_listings(self, node: Node | ControlFolder) -> None:
        """Listing a folder of series (a study, in the default layout) is usually followed by
        listing each series (ls -lR, a viewer's import): fetch their listings in parallel now."""
        if not isinstance(node, Node) or node.depth != self.tree.depth - 1 or self.reader.prefetch.mode == "off":
            return
        rows = self.tree.rows(node)
        if len(rows) > MAX_LISTING_PREFETCH:
            return
        for row in rows:
            self._list_ahead(row)

    def _listing_ahead(self, path: str, row: int) -> None:
        """A series folder looked up (``ls -l``, ``ls -R`` of series folders, a viewer's import)
        is usually listed next: fetch its listing in the background, so that ``ls -lR`` of 50
        series costs about one round trip, not 50 in a row. Not for a folder among many (the
        ``ls -l`` of a flat layout's root must not become a million LISTs), nor while as many
        lookups' listings are already on their way."""
        if self.reader.prefetch.mode == "off":
            return
        parent = self._folder(tuple(part for part in path.split("/") if part)[:-1])
        if parent is None or self.tree.num_children(parent) > MAX_LISTING_PREFETCH:
            return
        with self._ahead_lock:
            if len(self._ahead) >= MAX_LISTING_PREFETCH:
                return
        self._list_ahead(row)

    def _list_ahead(self, row: int) -> None:
        """Fetch a series' listing in the background, unless it is in memory or on its way."""
        uuid = self._series_uuid(row)
        if self.listings.peek(uuid) is not None:
            return
        with self._ahead_lock:
            if uuid in self._ahead:
                return
            self._ahead.add(uuid)

        def fetch() -> None:
            try:
                self._listing(row)
            finally:
                with self._ahead_lock:
                    self._ahead.discard(uuid)

        self.reader.background.submit(SERIES, 0, fetch)

    def _entries_of(self, node: Node | ControlFolder) -> list[tuple[str, int, int]]:
        """The entries of a folder above the series level (or of a control folder)."""
        entries = list(_DOT_ENTRIES)
        if node is BY_ID:
            return entries  # answers lookups only: its names are every identifier
        if node is CONTROL:
            entries.append((BY_ID_DIR, stat.S_IFDIR, 0))
            entries.extend((entry, stat.S_IFREG, 0) for entry in sorted(self._control_files))
            return entries
        assert isinstance(node, Node)
        entries.extend((entry, stat.S_IFDIR, 0) for entry in self.tree.children(node))
        if node == self.tree.root:
            entries.append((CONTROL_DIR, stat.S_IFDIR, 0))
        return entries

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
        """Metadata of a folder (the values its path stands for, counts) or of a series file."""
        node, name = self._resolve(path)
        if isinstance(node, ControlFolder):
            return {}
        if not self.tree.is_series(node):
            return folder_xattrs(self.catalog, node.depth, self.tree.rows(node))
        row = node.index
        info = self._file(node, name) if name is not None else None
        return series_xattrs(self.catalog, row, self.store.source, info)

    @_errors_to_errno
    def listxattr(self, path: str) -> list[str]:
        return list(self._xattrs(path))

    @_errors_to_errno
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self._xattrs(path).get(name)
        if value is None:
            raise mfusepy.FuseOSError(mfusepy.ENOATTR)
        return value.encode()

    # -- the control folder ---------------------------------------------------------------------

    def _control_file(self, folder: ControlFolder, name: str) -> Any:
        """The contents: bytes, or a memory-mapped buffer (the manifest of a large mount)."""
        if folder is BY_ID:
            return self._folders_of(name)
        if name == "stats":
            return (json.dumps(self.collect_stats(), indent=1) + "\n").encode()
        return self._control_files[name]

    def _folders_of(self, identifier: str) -> bytes:
        """``by-id/<identifier>``: the folders of a series, study or patient, one a line (the
        identifier escaped as a folder name is, so a PatientID with a ``/`` can be asked too)."""
        with self._by_id_lock:
            text = self._by_id.get(identifier)
        if text is None:
            found = find(self.tree, unescape_name(identifier))
            text = b"" if found is None else "".join(f"{folder}\n" for folder in found.folders).encode()
            with self._by_id_lock, contextlib.suppress(ValueError):  # larger than the cache: not kept
                self._by_id[identifier] = text
        if not text:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return text

    def wants_direct_io(self, fh: int) -> bool:
        return fh in self._direct_io

    def collect_stats(self) -> dict[str, Any]:
        """The live statistics (``/.idcfs/stats``, ``idcfs stats``, ``--metrics-port``)."""
        store = self.store
        fetched = store.counters.snapshot()
        with self._handles_lock:
            open_files = sum(isinstance(h, _Handle) for h in self._handles.values())
        return {
            "mountpoint": self.mount_info.get("mountpoint"),
            "idc_version": self.catalog.idc_version,
            "source": store.source,
            "uptime_seconds": round(time.monotonic() - self._started, 1),
            "store": store.breaker.state(),
            "requests": {"GET": fetched["GET"], "LIST": fetched["LIST"]},
            "bytes_fetched": fetched["bytes_fetched"],
            "retries": fetched["retries"],
            "errors": fetched["errors"],
            "not_found": fetched["not_found"],
            "internal_errors": self.counters["internal_errors"],
            "get_latency": store.get_latency.snapshot(),
            "cache": self._cache_stats(),
            "prefetch": self._prefetch_stats(),
            "open_files": open_files,
        }

    def _cache_stats(self) -> dict[str, Any]:
        """Per tier: memory and disk blocks, listings, and what the kernel's page cache spared."""
        cache, served = self.reader.cache, self.counters.snapshot()
        cached, disk = cache.counters.snapshot(), cache.disk
        return {
            "memory": {
                "hits": cached["memory_hits"],
                "misses": cached["memory_misses"],
                "bytes": cache.bytes_used,
                "capacity": cache.max_bytes,
                "buffers_reused": RECYCLED.reused,
            },
            "disk": {
                "hits": cached["disk_hits"],
                "misses": cached["disk_misses"],
                "bytes": disk.bytes_used if disk is not None else 0,
                "capacity": disk.size_limit if disk is not None else 0,
                "paused": disk.paused if disk is not None else False,
            },
            "listings": {"bytes": self.listings.bytes_used, "capacity": self.listings.max_bytes},
            "kernel": {
                "reads": served["reads"],
                "bytes": served["read_bytes"],
                "files_without_reads": served["files_without_reads"],
            },
        }

    def _prefetch_stats(self) -> dict[str, Any]:
        cache, background = self.reader.cache, self.reader.background
        cached = cache.counters.snapshot()
        return {
            "mode": self.reader.prefetch.mode,
            "useful_bytes": cached["prefetch_useful_bytes"],
            "wasted_bytes": cached["prefetch_wasted_bytes"],
            "unread_bytes": cache.unread_prefetched_bytes,
            "completed": background.completed,
            "failed": background.failed,
        }

    # -- reading ------------------------------------------------------------------------------

    @_errors_to_errno
    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise mfusepy.FuseOSError(errno.EROFS)
        node, name = self._resolve(path)
        if name is None:
            raise mfusepy.FuseOSError(errno.EISDIR)
        if isinstance(node, ControlFolder):
            handle = self._new_handle(self._control_file(node, name))  # a snapshot, consistent while read
            if node is CONTROL and name in LIVE_CONTROL_FILES:
                self._direct_io.add(handle)
            return handle
        if not self.tree.is_series(node):
            raise mfusepy.FuseOSError(errno.ENOENT)
        info = self._file(node, name)
        return self._new_handle(_Handle(self._object_ref(node.index, info), ReadState(), node.index))

    def _object_ref(self, row: int, info: ObjectInfo) -> ObjectRef:
        return ObjectRef(self._series_bucket(row), f"{self._series_uuid(row)}/{info.name}", info.size)

    def _new_handle(self, target: _Handle | Any) -> int:
        with self._handles_lock:
            handle = self._next_handle
            self._next_handle += 1
            self._handles[handle] = target
        return handle

    @_errors_to_errno
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        target = self._handles.get(fh)
        if target is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        if not isinstance(target, _Handle):  # a file of the control folder (bytes, or mapped)
            return bytes(target[offset : offset + size])
        if not target.series_queued:  # the first read of an instance: queue the rest of its series
            target.series_queued = True
            self._prefetch_series(target)
        data = self.reader.read(target.ref, offset, size, target.state)
        target.reads += 1
        self.counters.add("reads")
        self.counters.add("read_bytes", len(data))
        return data

    def _prefetch_series(self, handle: _Handle) -> None:
        """Queue the rest of the series, the first time one of its files is read. Everything
        per-object happens inside ``objects``, which the reader calls once per series."""
        row = handle.series_row
        uuid = self._series_uuid(row)
        if not self.reader.wants_series(uuid):
            return
        if self.catalog.series.column("Modality")[row].as_py() == "SM":
            return  # slide microscopy is read as random tiles, never whole

        def objects() -> list[ObjectRef]:
            listing = self._listing(row)
            return [self._object_ref(row, info) for info in listing]

        self.reader.prefetch_series(uuid, objects, handle.ref)

    def destroy(self, path: str) -> None:
        self.reader.close()
        self.store.close()

    @_errors_to_errno
    def release(self, path: str, fh: int) -> int:
        with self._handles_lock:
            target = self._handles.pop(fh, None)
            self._direct_io.discard(fh)
        if isinstance(target, _Handle) and target.reads == 0 and target.ref.size:
            self.counters.add("files_without_reads")  # the kernel's page cache served it (or nothing was read)
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
