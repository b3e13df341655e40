"""The tree as files, for every face: paths to entries, folder listings, open files, metadata.

This is the one place that knows what a path of the tree means. Above the series level every
name comes from the catalog (closed world: an unknown name is not found at once, with no
network); a series folder's files come from its listing (one paged LIST, cached for good); the
bytes come from the block reader. The hidden ``/.idcfs`` folder (:mod:`idcfs.vfs.control`) sits
beside the collections at the root.

Faces (the FUSE mount, ``idc://``, WebDAV) translate their protocol onto :class:`Vfs` and add
no naming, caching or fetching of their own. Errors are ``OSError`` kinds with their errno
(:mod:`idcfs.vfs.errors`); a network failure after retries is a ``StoreError``.

Locks: each of this module's caches has a lock of its own, held only around the cache itself;
none is held while another lock is taken, or across a fetch.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import logging
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc
from cachetools import LRUCache

from idcfs.blocks.reader import ObjectRef, Reader
from idcfs.catalog.snapshot import Snapshot
from idcfs.catalog.tree import Node
from idcfs.derived.kinds import IMAGE
from idcfs.derived.pack import PackedFile
from idcfs.derived.volumes import SeriesToBuild, Volumes
from idcfs.remote.objects import ObjectInfo
from idcfs.util.counters import Counters
from idcfs.vfs import errors
from idcfs.vfs.control import BY_ID, BY_ID_DIR, CONTROL, CONTROL_DIR, LIVE_FILES, ControlFiles, ControlFolder
from idcfs.vfs.files import BytesFile, File, SeriesFile
from idcfs.vfs.groups import SEPARATOR, Span, find_group, group_name, spans
from idcfs.vfs.listing import SeriesListing
from idcfs.vfs.listings import ListingCache, ListingPath
from idcfs.vfs.series_rows import ROWS_KEPT, SeriesRows
from idcfs.vfs.volume_view import VolumeFolder, VolumeView
from idcfs.vfs.xattrs import folder_xattrs, series_xattrs

log = logging.getLogger(__name__)

#: Per entry of a folder's listing kept (a tuple, a list slot, its name).
_BYTES_PER_ENTRY = 120
#: Seconds a closing tree waits for the listings still to be written (a remount finds them).
LISTINGS_AT_CLOSE = 10.0


@dataclass(frozen=True)
class Entry:
    """What a path is: a folder (``children`` entries) or a file of ``size`` bytes."""

    is_dir: bool
    size: int
    mtime_ns: int
    children: int = 0
    #: Rendered again at each open (``/.idcfs/stats``): its size is the opened file's, not this.
    live: bool = False

    @property
    def mode(self) -> int:
        """The POSIX mode: read-only for everyone."""
        return (stat.S_IFDIR | 0o555) if self.is_dir else (stat.S_IFREG | 0o444)


@dataclass(frozen=True)
class Usage:
    """The tree's size, as ``statfs`` and a WebDAV quota tell it."""

    total_bytes: int
    num_series: int


_Folder = Node | ControlFolder | VolumeFolder
_Place = tuple[_Folder, str | None]


class Vfs:
    """The tree of a catalog snapshot, its series' files listed and read through ``reader``."""

    def __init__(
        self,
        snapshot: Snapshot,
        reader: Reader,
        listings: ListingCache[SeriesListing],
        entries_bytes: int,
        info: dict[str, Any] | None = None,
        volumes: Volumes | None = None,
    ) -> None:
        self.tree = snapshot.tree
        self.catalog = self.tree.catalog
        self.reader = reader
        self.store = reader.store
        self.info = info or {}
        self.series = SeriesRows(self.catalog)
        self.listings = ListingPath(listings, self.store, self.series, reader.run_ahead if reader.prefetching else None)
        self.control = ControlFiles(self.tree, self.info, snapshot.manifest, self.stats)
        self._started = time.monotonic()
        #: Reads that reached the tree (a face's own cache could not answer them), their bytes,
        #: files closed with no read, unexpected exceptions (counted by the faces).
        self.counters = Counters("reads", "read_bytes", "files_without_reads", "internal_errors")
        self._open_files = 0
        self._open_lock = threading.Lock()
        # Entries of recent folders above the series level, ready to hand out again (a face may
        # ask at every opendir). Capped in (estimated) bytes: the root of a flat layout alone is
        # a million entries. A series folder's entries come from its listing, never copied here.
        self._entries: LRUCache[Node | ControlFolder, list[tuple[str, bool]]] = LRUCache(
            maxsize=max(1, entries_bytes // _BYTES_PER_ENTRY), getsizeof=len
        )
        self._entries_lock = threading.Lock()
        # The folders of the paths in use (the tree never changes): each operation on a file
        # resolved its folder again, a binary search per level.
        self._folder = functools.lru_cache(maxsize=ROWS_KEPT)(self._lookup_folder)
        self._total_bytes = int((pc.sum(self.catalog.series.column("series_size_MB")).as_py() or 0) * 1e6)
        self._release_ns = int(self.catalog.release_time() * 1e9)
        #: ``--volumes``: a ``.nifti`` folder beside each image series and SEG.
        self.volumes = None if volumes is None else self._volume_view(volumes)

    @property
    def block_size(self) -> int:
        return self.reader.block_size

    # -- paths ----------------------------------------------------------------------------------

    def _resolve(self, path: str) -> _Place:
        """The folder of ``path``, and the file name when ``path`` names a file in it."""
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == CONTROL_DIR:
            if len(parts) == 1:
                return CONTROL, None
            if len(parts) == 2 and parts[1] in self.control.names:
                return CONTROL, parts[1]
            if parts[1] == BY_ID_DIR and len(parts) <= 3:
                return BY_ID, parts[2] if len(parts) == 3 else None
            raise errors.not_found(path)
        depth = self.tree.depth
        if len(parts) > depth + 1:
            raise errors.not_found(path)
        folder = self._folder(tuple(parts[:depth]))
        if folder is None:
            raise errors.not_found(path)
        return folder, parts[depth] if len(parts) == depth + 1 else None

    def _lookup_folder(self, parts: tuple[str, ...]) -> Node | VolumeFolder | None:
        found = self.tree.lookup(list(parts))
        if found is None and self.volumes is not None and len(parts) == self.tree.depth:
            parent = self.tree.lookup(list(parts[:-1]))
            if parent is not None:

                def series_row(name: str) -> int | None:
                    node = self.tree.child(parent, name)
                    return None if node is None else node.index

                return self.volumes.folder(parts[-1], series_row)
        return found

    def _object(self, node: Node, name: str, path: str) -> ObjectInfo:
        info = self.listings.get(node.index).get(name)
        if info is None:
            raise errors.not_found(path)
        return info

    # -- what a path is -------------------------------------------------------------------------

    def stat(self, path: str) -> Entry:
        """The entry of ``path``. A series folder looked up may have its listing fetched ahead
        (it is usually listed next)."""
        real, span = self._ungrouped(path)
        if span is not None:  # a group of a large folder's entries (idcfs.vfs.groups)
            return Entry(True, 0, self._stat(real).mtime_ns, children=span[1] - span[0])
        return self._stat(real)

    def _stat(self, path: str) -> Entry:
        folder, name = self._resolve(path)
        if isinstance(folder, ControlFolder):
            if name is None:
                return Entry(True, 0, self._release_ns)
            live = folder is CONTROL and name in LIVE_FILES
            return Entry(False, len(self._control_file(folder, name, path)), self._release_ns, live=live)
        if isinstance(folder, VolumeFolder):
            mtime = self.series.time_ns(folder.row)
            if name is None:
                return Entry(True, 0, mtime)
            return Entry(False, self._volume_file(folder, name, path).size, mtime)
        tree = self.tree
        if name is None:
            if tree.is_series(folder):
                self._looked_up_series(path, folder.index)
                return Entry(True, 0, self.series.time_ns(folder.index))
            return Entry(True, 0, self._release_ns, children=tree.num_children(folder))
        if not tree.is_series(folder):  # a name one level too deep for a folder above series
            raise errors.not_found(path)
        info = self._object(folder, name, path)
        return Entry(False, info.size, self.series.time_ns(folder.index))

    def _looked_up_series(self, path: str, row: int) -> None:
        parts = [p for p in path.split("/") if p]
        parent = self._folder(tuple(parts[:-1]))
        if isinstance(parent, Node):
            self.listings.series_looked_up(row, self.tree.num_children(parent))

    def require_folder(self, path: str) -> None:
        """Nothing when ``path`` is a folder; else why not (not found, or not a folder)."""
        real, span = self._ungrouped(path)
        if span is None:
            self._folder_at(real)

    def _folder_at(self, path: str) -> _Folder:
        folder, name = self._resolve(path)
        if name is not None:
            self._control_or_object(folder, name, path)  # not found, or a file
            raise errors.not_a_folder(path)
        return folder

    def list(self, path: str, grouped: bool = False) -> Iterable[tuple[str, bool]]:
        """The entries of the folder ``path`` as (name, is a folder), sorted; without ``.`` and
        ``..``. A series folder's names come straight from its listing, one at a time (a
        92,000-entry folder costs no copy). ``grouped``: a large folder as groups of its
        entries (:mod:`idcfs.vfs.groups`), for a client that cannot take it whole."""
        real, span = self._ungrouped(path)
        if span is not None or grouped:
            return ((name, is_dir) for name, is_dir, _ in self._list_grouped(real, span))
        folder = self._folder_at(real)
        if isinstance(folder, Node) and self.tree.is_series(folder):
            return _files(self.listings.get(folder.index).entry_names())
        if isinstance(folder, VolumeFolder):
            return [(name, False) for name, _ in self._volume_entries(folder)]
        return self._folder_entries(folder)

    def list_sized(self, path: str, grouped: bool = False) -> Iterable[tuple[str, bool, int]]:
        """:meth:`list` with each file's exact size (0 for a folder), from the listing itself: a
        face that shows sizes (fsspec's ``ls``, a WebDAV PROPFIND) needs no lookup per file."""
        real, span = self._ungrouped(path)
        if span is not None or grouped:
            return self._list_grouped(real, span)
        return self._list_sized(real)

    def _list_sized(self, path: str) -> Iterable[tuple[str, bool, int]]:
        folder = self._folder_at(path)
        if isinstance(folder, Node) and self.tree.is_series(folder):
            listing = self.listings.get(folder.index)
            return ((name, False, size) for name, size in zip(listing.entry_names(), listing.sizes, strict=True))
        if isinstance(folder, VolumeFolder):
            return [(name, False, size) for name, size in self._volume_entries(folder)]
        if folder is CONTROL:
            return ((name, is_dir, 0 if is_dir else self.stat(f"{CONTROL_DIR}/{name}").size)
                    for name, is_dir in self._folder_entries(folder))  # fmt: skip
        return ((name, is_dir, 0) for name, is_dir in self._folder_entries(folder))

    # -- groups of a large folder's entries (idcfs.vfs.groups) -------------------------------------

    def _ungrouped(self, path: str) -> tuple[str, Span | None]:
        """The real path of ``path`` (its group names taken out) and, when it names a group,
        that group's span of its folder's entries."""
        if SEPARATOR not in path:
            return path, None
        real: builtins.list[str] = []
        span: Span | None = None
        for part in (p for p in path.split("/") if p):
            if SEPARATOR in part:
                found = self._group_in("/".join(real), span, part)
                if found is not None:
                    span = found
                    continue
            real.append(part)
            span = None
        return "/".join(real), span

    def _group_in(self, path: str, within: Span | None, name: str) -> Span | None:
        try:
            count, name_at, _ = self._by_position(path)
        except OSError:  # not a folder: the name is looked up as it is, and not found
            return None
        return find_group(name_at, within or (0, count), name)

    def _list_grouped(self, path: str, span: Span | None) -> Iterable[tuple[str, bool, int]]:
        """The real folder ``path``'s entries of ``span`` (all when None), as groups where
        there are too many to show."""
        count, name_at, kind_at = self._by_position(path)
        within = span or (0, count)
        groups = spans(*within)
        if groups:
            return [(group_name(name_at, group), True, 0) for group in groups]
        if span is None:
            return self._list_sized(path)
        return ((name_at(k), *kind_at(k)) for k in range(*within))

    def _by_position(self, path: str) -> tuple[int, Callable[[int], str], Callable[[int], tuple[bool, int]]]:
        """The real folder ``path``'s entries by position: how many, the name at a position,
        and (whether it is a folder, its size) at a position."""
        folder = self._folder_at(path)
        if isinstance(folder, Node) and self.tree.is_series(folder):
            listing = self.listings.get(folder.index)
            return len(listing), listing.names.get, lambda k: (False, listing.sizes[k])
        if isinstance(folder, VolumeFolder):
            files = self._volume_entries(folder)
            return len(files), lambda k: files[k][0], lambda k: (False, files[k][1])
        entries = self._folder_entries(folder)
        return len(entries), lambda k: entries[k][0], lambda k: (entries[k][1], 0)

    def _folder_entries(self, folder: Node | ControlFolder) -> builtins.list[tuple[str, bool]]:
        """The entries of a folder above the series level (or of a control folder), kept."""
        with self._entries_lock:
            entries = self._entries.get(folder)
        if entries is None:
            entries = self._entries_of(folder)
            with self._entries_lock, contextlib.suppress(ValueError):  # over the cap: not kept
                self._entries[folder] = entries
            if isinstance(folder, Node) and folder.depth == self.tree.depth - 1:
                self.listings.folder_listed(self.tree.rows(folder))
        return entries

    def _entries_of(self, folder: Node | ControlFolder) -> builtins.list[tuple[str, bool]]:
        if folder is BY_ID:
            return []  # answers lookups only: its names are every identifier
        if folder is CONTROL:
            return [(BY_ID_DIR, True), *((name, False) for name in self.control.names)]
        assert isinstance(folder, Node)
        entries = [(name, True) for name in self.tree.children(folder)]
        if self.volumes is not None and folder.depth == self.tree.depth - 1:
            entries = self.volumes.with_volumes(entries, self.tree.rows(folder).start)
        if folder == self.tree.root:
            entries.append((CONTROL_DIR, True))
        return entries

    def _control_or_object(self, folder: _Folder, name: str, path: str) -> None:
        if isinstance(folder, ControlFolder):
            self._control_file(folder, name, path)
        elif isinstance(folder, VolumeFolder):
            self._volume_file(folder, name, path)
        elif self.tree.is_series(folder):
            self._object(folder, name, path)
        else:
            raise errors.not_found(path)

    def _control_file(self, folder: ControlFolder, name: str, path: str) -> bytes | Any:
        data = self.control.folders_of(name) if folder is BY_ID else self.control.contents(name)
        if data is None:
            raise errors.not_found(path)
        return data

    # -- the --volumes view (idcfs.vfs.volume_view) ------------------------------------------------

    def _volume_view(self, volumes: Volumes) -> VolumeView:
        sizes = self.catalog.series.column("series_size_MB")
        uids = self.catalog.series.column("SeriesInstanceUID")

        def series_bytes(row: int) -> int:
            return int((sizes[row].as_py() or 0) * 1e6)

        def to_build(row: int, kind: str, base: str) -> SeriesToBuild:
            def objects() -> builtins.list[ObjectRef]:
                return [self._object_ref(row, info) for info in self.listings.get(row)]

            return SeriesToBuild(self.series.uuid(row), kind, base, objects)

        @functools.lru_cache(maxsize=1024)
        def row_of_uid(uid: str) -> int | None:
            rows = np.flatnonzero(pc.fill_null(pc.equal(uids, uid), False).to_numpy(zero_copy_only=False))
            return int(rows[0]) if rows.size else None

        def image_series(uid: str) -> SeriesToBuild | None:
            row = row_of_uid(uid)
            if row is None or view.kind(row) != IMAGE:
                return None
            return to_build(row, IMAGE, self.tree.path_of_row(row)[-1])

        volumes.image_series = image_series
        view = VolumeView(volumes, self.series.modality, series_bytes, to_build)
        return view

    def _volume_entries(self, folder: VolumeFolder) -> builtins.list[tuple[str, int]]:
        assert self.volumes is not None
        return self.volumes.entries(folder)

    def _volume_file(self, folder: VolumeFolder, name: str, path: str) -> PackedFile:
        assert self.volumes is not None
        found = self.volumes.file(folder, name)
        if found is None:
            raise errors.not_found(path)
        return found

    # -- reading --------------------------------------------------------------------------------

    def open(self, path: str) -> File:
        """An open file of ``path``, to read ranges from; close it when done."""
        real, span = self._ungrouped(path)
        if span is not None:
            raise errors.is_a_folder(path)
        folder, name = self._resolve(real)
        if name is None:
            raise errors.is_a_folder(path)
        if isinstance(folder, ControlFolder):
            data = self._control_file(folder, name, path)  # a snapshot, consistent while read
            opened: File = BytesFile(data, live=folder is CONTROL and name in LIVE_FILES)
        elif isinstance(folder, VolumeFolder):
            assert self.volumes is not None
            volume = self.volumes.open(folder, name)
            if volume is None:
                raise errors.not_found(path)
            opened = volume
        elif not self.tree.is_series(folder):
            raise errors.not_found(path)
        else:
            info = self._object(folder, name, path)
            row = folder.index
            ref = self._object_ref(row, info)
            opened = SeriesFile(self.reader, ref, lambda ref: self._queue_series(row, ref), self.counters, self._closed)
            with self._open_lock:
                self._open_files += 1
        return opened

    def object_ref(self, path: str) -> ObjectRef:
        """Where the object a series file of the tree is stored (for a reader of its own: the
        DICOMweb face reads headers with small blocks)."""
        folder, name = self._resolve(path)
        if not isinstance(folder, Node) or name is None or not self.tree.is_series(folder):
            raise errors.not_found(path)
        return self._object_ref(folder.index, self._object(folder, name, path))

    def _object_ref(self, row: int, info: ObjectInfo) -> ObjectRef:
        return ObjectRef(self.series.bucket(row), f"{self.series.uuid(row)}/{info.name}", info.size)

    def _queue_series(self, row: int, opened: ObjectRef) -> None:
        """Queue the rest of the series, the first time one of its files is read. Everything
        per-object happens inside ``objects``, which the reader calls once per series."""
        uuid = self.series.uuid(row)
        if not self.reader.wants_series(uuid):
            return
        if self.series.modality(row) == "SM":
            return  # slide microscopy is read as random tiles, never whole

        def objects() -> list[ObjectRef]:
            return [self._object_ref(row, info) for info in self.listings.get(row)]

        self.reader.prefetch_series(uuid, objects, opened)

    def _closed(self) -> None:
        with self._open_lock:
            self._open_files -= 1

    # -- metadata -------------------------------------------------------------------------------

    def xattrs(self, path: str) -> dict[str, str]:
        """``user.idc.*`` metadata of a folder (the values its path stands for, counts) or of a
        series' file (its series, URL, ETag, size). A group of a folder's entries has none."""
        real, span = self._ungrouped(path)
        if span is not None:
            return {}
        folder, name = self._resolve(real)
        if isinstance(folder, ControlFolder | VolumeFolder):
            if name is not None:
                self._control_or_object(folder, name, path)
            return {}
        if not self.tree.is_series(folder):
            if name is not None:
                raise errors.not_found(path)
            return folder_xattrs(self.catalog, folder.depth, self.tree.rows(folder))
        info = self._object(folder, name, path) if name is not None else None
        return series_xattrs(self.catalog, folder.index, self.store.source, info)

    def usage(self) -> Usage:
        return Usage(self._total_bytes, self.catalog.num_series)

    def stats(self) -> dict[str, Any]:
        """The live statistics (``/.idcfs/stats``, ``idcfs stats``, ``--metrics-port``)."""
        store = self.store
        fetched = store.counters.snapshot()
        served = self.counters.snapshot()
        blocks = self.reader.stats()
        with self._open_lock:
            open_files = self._open_files
        return {
            "mountpoint": self.info.get("mountpoint"),
            "idc_version": self.catalog.idc_version,
            "source": store.source,
            "uptime_seconds": round(time.monotonic() - self._started, 1),
            "store": store.breaker.state(),
            "requests": {"GET": fetched["GET"], "LIST": fetched["LIST"]},
            "bytes_fetched": fetched["bytes_fetched"],
            "retries": fetched["retries"],
            "errors": fetched["errors"],
            "not_found": fetched["not_found"],
            "internal_errors": served["internal_errors"],
            "get_latency": store.get_latency.snapshot(),
            "cache": {
                **blocks["cache"],
                "listings": {"bytes": self.listings.cache.bytes_used, "capacity": self.listings.cache.max_bytes},
                "kernel": {
                    "reads": served["reads"],
                    "bytes": served["read_bytes"],
                    "files_without_reads": served["files_without_reads"],
                },
            },
            "prefetch": blocks["prefetch"],
            "open_files": open_files,
            **({"volumes": self.volumes.volumes.stats()} if self.volumes is not None else {}),
        }

    def start_background(self) -> None:
        """Start the background workers now (a face whose process serves, once it runs: a FUSE
        daemon, a share), not with their first task, which would wait for the thread."""
        if self.reader.prefetching:
            self.reader.background.start()

    def flush(self, timeout: float) -> bool:
        """Wait, ``timeout`` seconds at most, until what was read and listed is written to the
        disk cache."""
        deadline = time.monotonic() + timeout
        listed = self.listings.cache.flush(timeout)
        return self.reader.flush(max(0.0, deadline - time.monotonic())) and listed

    def close(self) -> None:
        self.listings.cache.close(LISTINGS_AT_CLOSE)
        self.reader.close()
        self.store.close()


def _files(names: Iterator[str]) -> Iterator[tuple[str, bool]]:
    return ((name, False) for name in names)
