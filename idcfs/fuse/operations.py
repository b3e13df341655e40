"""The FUSE operations: a translation of the kernel's requests onto :class:`~idcfs.vfs.vfs.Vfs`.

Read-only and immutable: every write-type operation answers EROFS, and the kernel is told to
cache attributes, entries and file pages for a long time. Failures become errnos here and
nowhere else: the tree's ``OSError`` kinds carry theirs (ENOENT, ENOTDIR, EISDIR, EROFS), a
network failure after retries is EIO (logged once where it happened), anything unexpected EIO
with a log line, never a traceback at the caller.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import mfusepy

from idcfs.remote.retry import StoreError
from idcfs.vfs.errors import NoSuchAttribute
from idcfs.vfs.files import File
from idcfs.vfs.vfs import Entry, Vfs

log = logging.getLogger(__name__)

#: Seconds the kernel may cache attributes and names: IDC objects never change.
KERNEL_CACHE_TIMEOUT = 24 * 3600.0
#: Reads the kernel may have in flight at once (the daemon runs up to 64 threads to answer).
FUSE_MAX_BACKGROUND = 48

_DOTS = ((".", stat.S_IFDIR, 0), ("..", stat.S_IFDIR, 0))
_TYPE = {True: stat.S_IFDIR, False: stat.S_IFREG}

F = TypeVar("F", bound=Callable[..., Any])

#: st_blksize, the read size buffered readers pick (Python's open(), C stdio's fopen, so pydicom
#: and OpenSlide). Under the mount's readahead the kernel's first read of a file is twice the
#: first read asked, and a demand read is answered once that much has arrived: a header read's
#: first bytes come sooner the smaller this is (on a slow line, 128 KiB here cost the 128 KiB
#: more it waited for). A stream is not slowed: the kernel's readahead grows its requests
#: whatever this says, and coreutils read at least 128 KiB anyway.
PREFERRED_READ = 64 << 10


def _errno_of(method: F) -> F:
    """The tree's errors as errnos, so no traceback ever reaches mfusepy's generic handler."""

    @functools.wraps(method)
    def wrapper(self: FuseOperations, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except NoSuchAttribute:
            raise mfusepy.FuseOSError(mfusepy.ENOATTR) from None
        except StoreError:  # already logged once, with the object and the reason
            raise mfusepy.FuseOSError(errno.EIO) from None
        except OSError as error:
            if error.errno:
                raise mfusepy.FuseOSError(error.errno) from None
            self._internal_error(method.__name__, args)
        except Exception:
            self._internal_error(method.__name__, args)
        raise mfusepy.FuseOSError(errno.EIO)

    return wrapper  # type: ignore[return-value]


def _read_only(*_args: Any, **_kwargs: Any) -> int:
    raise mfusepy.FuseOSError(errno.EROFS)


def _owner() -> tuple[int, int]:
    """Whose the files are: this process's user and group (Windows has none)."""
    if sys.platform == "win32":
        return 0, 0
    return os.getuid(), os.getgid()


class FuseOperations(mfusepy.Operations):
    use_ns = True

    def __init__(self, vfs: Vfs, on_ready: Callable[[], None] | None = None) -> None:
        self.vfs = vfs
        self._on_ready = on_ready
        self.ready = False  # set once the kernel has completed the FUSE handshake
        #: Set at the first request after INIT: the handshake is done in the kernel too.
        self.answering = threading.Event()
        self._uid, self._gid = _owner()
        self._files: dict[int, File] = {}
        self._files_lock = threading.Lock()
        self._next_fh = itertools.count(1)

    def _internal_error(self, operation: str, args: tuple[Any, ...]) -> None:
        self.vfs.counters.add("internal_errors")
        log.exception("internal error in %s%r", operation, args[:1])

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
        self.vfs.start_background()  # the daemon runs: no first task waits for a thread to be made
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        self.vfs.close()

    # -- the tree -------------------------------------------------------------------------------

    @_errno_of
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if not self.answering.is_set():
            self.answering.set()
        return self._stat(self.vfs.stat(path))

    def _stat(self, entry: Entry) -> dict[str, Any]:
        size, when = entry.size, entry.mtime_ns
        return {
            "st_mode": entry.mode,
            "st_nlink": 2 + entry.children if entry.is_dir else 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": PREFERRED_READ,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_atime": when,
            "st_mtime": when,
            "st_ctime": when,
        }

    @_errno_of
    def readdir(self, path: str, fh: Any) -> Iterator[tuple[str, int, int]]:
        """Entries with their type (d_type) so ``find`` and ``ls`` need not stat each one, as
        bare mode ints: mfusepy copies one into the stat with one assignment, where a dict
        costs a loop per entry (a collection has up to 26k patients)."""
        entries = self.vfs.list(path)
        return itertools.chain(_DOTS, ((name, _TYPE[is_dir], 0) for name, is_dir in entries))

    @_errno_of
    def opendir(self, path: str) -> int:
        self.vfs.require_folder(path)
        return 0

    @_errno_of
    def access(self, path: str, amode: int) -> int:
        self.vfs.stat(path)
        if amode & os.W_OK:
            raise mfusepy.FuseOSError(errno.EROFS)
        return 0

    @_errno_of
    def statfs(self, path: str) -> dict[str, int]:
        block, usage = self.vfs.block_size, self.vfs.usage()
        return {
            "f_bsize": block,
            "f_frsize": block,
            "f_blocks": usage.total_bytes // block,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": usage.num_series,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    @_errno_of
    def listxattr(self, path: str) -> list[str]:
        return list(self.vfs.xattrs(path))

    @_errno_of
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self.vfs.xattrs(path).get(name)
        if value is None:
            raise NoSuchAttribute(path, name)
        return value.encode()

    # -- files ----------------------------------------------------------------------------------

    @_errno_of
    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise mfusepy.FuseOSError(errno.EROFS)
        opened = self.vfs.open(path)
        fh = next(self._next_fh)
        with self._files_lock:
            self._files[fh] = opened
        return fh

    def wants_direct_io(self, fh: int) -> bool:
        opened = self._files.get(fh)
        return opened is not None and opened.live

    @_errno_of
    def read(self, path: str, size: int, offset: int, fh: int) -> Any:
        opened = self._files.get(fh)
        if opened is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return opened.read(offset, size)

    @_errno_of
    def release(self, path: str, fh: int) -> int:
        with self._files_lock:
            opened = self._files.pop(fh, None)
        if opened is not None:
            opened.close()
        return 0

    # -- everything that would change the tree --------------------------------------------------

    chmod = chown = create = link = mkdir = mknod = rename = rmdir = _read_only
    setxattr = removexattr = symlink = truncate = unlink = utimens = write = _read_only
