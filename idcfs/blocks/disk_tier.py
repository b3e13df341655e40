"""The disk tier of the block cache: one plain file per block, and SQLite as the index only.

Why not a key-value store: diskcache (earlier versions' block store) created a file and wrote a SQLite row per
block through its own layers, and on two cores that one writer thread was the bottleneck of a
cold 500 MB read (~1 ms of CPU per MiB, with the fetchers waiting on it). Here a block is one
``writev`` of its buffer and a small trailer, and the index costs one row per block in batched
transactions.

The read path never touches SQLite: a block's file name is a hash of its key, so a lookup is an
``open``, and the trailer (a CRC32C per chunk, the length, the magic) says whether the file is
whole. A read of part of a block reads and checks only the chunks it touches: a 64 KiB tile of a
slide larger than the memory tier costs a 64 KiB read from disk, not the whole block's. Hits are noted
in memory and written to the index as access times in the writer's next batch (the LRU order
survives remounts). The index exists for the size cap and eviction (least recently used first),
and it is written before the files it names: a crash can leave a row without its file (a miss,
evicted in time), never a file nobody knows of. A file is written under a temporary name and
renamed, so a reader (or another mount sharing the folder) never sees half a block.

A disk that fails (full, read-only, removed) pauses the writes with one warning and is tried
again later; reads go on meanwhile.

On Windows a file another process (or thread) has open can be neither removed nor replaced: a
block that will not go keeps its row and is tried again at the next eviction, and a rename onto
a block file someone is reading finds the same bytes already there (a key names immutable
bytes) and drops its own copy. Files are opened in binary mode there (``O_BINARY``: the C
runtime's text mode would translate line ends), and read and written at an offset through a
file object where ``os`` has no positional calls (:func:`_read_into`, :func:`_write_at`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import mmap
import os
import shutil
import sqlite3
import struct
import sys
import threading
import time
from pathlib import Path

from crc32c import crc32c

from idcfs.blocks.buffers import Buffer, new_buffer
from idcfs.blocks.tiers import KEEP, DiskWrite

log = logging.getLogger(__name__)

#: After the block (so the block starts at offset 0 and a whole block is one aligned write): a
#: CRC32C (in hardware: a fifth of zlib's CRC32 time) per chunk of the block, then this footer:
#: the block's length, the chunk size, the magic.
_FOOTER = struct.Struct("<QI4s")
_CRC = struct.Struct("<I")
_MAGIC = b"IDC2"
#: A part of a block is read and checked in chunks of this size: what a kernel read or a tile
#: needs, without a whole block's read for it.
CHUNK = 64 << 10
#: The folder of this format's block files (a new format gets a new folder), and earlier formats'.
_FORMAT = "v2"
_EARLIER_FORMATS = ("v1",)
#: Free space the disk cache leaves on its disk (at most 5% of the disk), for everyone else.
DISK_RESERVE = 256 << 20
#: A background fetch waits this long at most for room in the disk write queue, then drops.
PUT_WAIT_TIMEOUT = 10.0
#: A batch (one transaction) holds at most this many blocks, or bytes.
_BATCH_BLOCKS, _BATCH_BYTES = 32, 32 << 20
#: Hits noted for the index at most (beyond that, a hit's access time is not recorded).
_MAX_TOUCHES = 100_000
#: A temporary file older than this is left over from a crash (a live writer renames in ms).
_STALE_TEMPORARY = 60.0
_PAGE = mmap.PAGESIZE
_O_DIRECT = getattr(os, "O_DIRECT", 0)
#: Binary mode on Windows (0 elsewhere). Close-on-exec needs no flag: Python's descriptors are
#: not inherited by child processes (PEP 446), on every platform.
_O_BINARY = getattr(os, "O_BINARY", 0)
#: A block waiting to be written: its file's name, its key, its bytes and how.
_Queued = tuple[str, str, "Buffer | bytes", DiskWrite]
#: How often eviction reads the stored total again from the index, at most (seconds).
_TOTAL_REREAD = 5.0
#: SQLite waits this long at most for another process holding the index (a mount sharing it).
_BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (name TEXT PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL,
                                   atime INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_atime ON blocks (atime);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


def _now() -> int:
    """An access time for the index: microseconds, so that blocks written or read in one second
    keep their order."""
    return time.time_ns() // 1000


def block_name(key: str) -> str:
    """The file name of a block: 128 bits of hash, so keys of any length or character are fine."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _file_of(directory: Path, name: str) -> Path:
    """The file of the block named ``name`` (see :func:`block_name`) under the tier's ``directory``."""
    return directory / _FORMAT / name[:2] / name


def block_path(directory: Path, key: str) -> Path:
    """Where the block ``key`` lives under the tier's ``directory`` (for ``cache`` commands and tests)."""
    return _file_of(directory, block_name(key))


def _read_into_portable(fd: int, into: Buffer, offset: int) -> int:
    """Read ``len(into)`` bytes at ``offset`` into ``into`` (fewer at the end of the file)
    through a file object: the path where ``os`` has no ``preadv`` (Windows). Each lookup opens
    its own descriptor, so moving its offset races with nobody."""
    with io.FileIO(fd, "rb", closefd=False) as handle, memoryview(into) as view:
        handle.seek(offset)
        done = 0
        while done < len(view):
            count = handle.readinto(view[done:])
            if not count:
                break
            done += count
        return done


def _write_at_portable(fd: int, parts: list[memoryview | bytes], offset: int) -> int:
    """Write ``parts`` one after the other at ``offset``, through a file object: the path where
    ``os`` has no ``pwritev`` (Windows). The descriptor is the writer's own temporary file."""
    with io.FileIO(fd, "wb", closefd=False) as handle:
        handle.seek(offset)
        done = 0
        for part in parts:
            with memoryview(part) as view:
                at = 0
                while at < len(view):
                    count = handle.write(view[at:])
                    if not count:
                        return done + at
                    at += count
            done += at
        return done


if sys.platform != "win32" and hasattr(os, "preadv") and hasattr(os, "pwritev"):

    def _read_into(fd: int, into: Buffer, offset: int) -> int:
        return os.preadv(fd, [into], offset)

    def _write_at(fd: int, parts: list[memoryview | bytes], offset: int) -> int:
        return os.pwritev(fd, parts, offset)

else:
    _read_into, _write_at = _read_into_portable, _write_at_portable


if sys.platform != "win32":

    def _drop_direct(fd: int) -> None:
        """Clear ``O_DIRECT`` on ``fd`` (for a block's unaligned tail); called only where
        ``O_DIRECT`` exists (Linux)."""
        import fcntl  # POSIX only: imported where it is used, so Windows never meets it

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)

else:

    def _drop_direct(fd: int) -> None:
        raise AssertionError("Windows has no O_DIRECT")  # never called there


def _connect(directory: Path) -> sqlite3.Connection:
    db = sqlite3.connect(
        directory / "index.sqlite", timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        # Two processes opening a new folder at once: switching it to WAL can meet "database is
        # locked" at once, without SQLite's busy wait; tried again within the same time.
        give_up = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # a cache: a power cut may lose the last rows, never corrupt
                db.executescript(_SCHEMA)
                return db
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > give_up:
                    raise
                time.sleep(0.05)
    except BaseException:
        db.close()
        raise


def summary(directory: Path) -> tuple[int, int, int | None] | None:
    """(blocks, bytes, cap of the last mount) of the tier in ``directory``; None if there is none."""
    if not (directory / "index.sqlite").exists():
        return None
    db = _connect(directory)
    try:
        count, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blocks").fetchone()
        cap = db.execute("SELECT value FROM meta WHERE name = 'size_limit'").fetchone()
        return int(count), int(total), None if cap is None else int(cap[0])
    finally:
        db.close()


def _trailer_size(length: int) -> int:
    return _CRC.size * -(-length // CHUNK) + _FOOTER.size


def _trailer(block: Buffer | bytes) -> bytes:
    view = memoryview(block)
    try:
        crcs = b"".join(_CRC.pack(crc32c(view[at : at + CHUNK])) for at in range(0, len(view), CHUNK))
    finally:
        view.release()
    return crcs + _FOOTER.pack(len(block), CHUNK, _MAGIC)


def seal(path: Path) -> int:
    """Append a block file's trailer to the file at ``path`` (written elsewhere, e.g. a volume
    built in a child process), so the tier can keep and check it as one block; its length."""
    with open(path, "r+b") as file:
        crcs = bytearray()
        while chunk := file.read(CHUNK):
            crcs += _CRC.pack(crc32c(chunk))
        length = file.tell()
        file.write(bytes(crcs) + _FOOTER.pack(length, CHUNK, _MAGIC))
    return length


def _tail(path: Path) -> bytes:
    """The footer of the block file at ``path``."""
    with open(path, "rb") as file:
        file.seek(-_FOOTER.size, os.SEEK_END)
        return file.read(_FOOTER.size)


def _read_checked(fd: int, length: int, first: int, into: Buffer) -> bool:
    """Read chunks ``first`` on, as many as ``into`` holds, of the block of ``length`` bytes in
    ``fd`` into ``into``, each checked against the trailer; whether the file is that block,
    whole, and those chunks intact."""
    trailer_size = _trailer_size(length)
    # One byte more than the trailer: a file longer than the block and its trailer is no block.
    trailer = bytearray(trailer_size + 1)
    if _read_into(fd, trailer, length) != trailer_size:
        return False
    stored_length, chunk, magic = _FOOTER.unpack_from(trailer, trailer_size - _FOOTER.size)
    if magic != _MAGIC or stored_length != length or chunk != CHUNK:
        return False
    if _read_into(fd, into, first * CHUNK) != len(into):
        return False
    with memoryview(into) as view:
        for at in range(0, len(view), CHUNK):
            if crc32c(view[at : at + CHUNK]) != _CRC.unpack_from(trailer, (first + at // CHUNK) * _CRC.size)[0]:
                return False
    return True


class OpenBlock:
    """A block file held open for many reads of its parts (a volume read from start to end): one
    descriptor, so the kernel's readahead follows the reads, and the trailer read once. Each
    read still checks the CRC32C of every chunk it returns. On Windows the file cannot be
    evicted while it is open (its row stays, and a later eviction removes it)."""

    def __init__(self, fd: int, length: int, crcs: bytes) -> None:
        self._fd, self.length, self._crcs = fd, length, crcs
        self._lock = threading.Lock()  # the portable read moves the descriptor's offset

    def read(self, start: int, stop: int) -> memoryview | None:
        """Bytes ``[start, stop)``, or None when the file is not whole or a chunk is damaged."""
        if not 0 <= start < stop <= self.length:
            raise ValueError(f"[{start}, {stop}) is not inside a block of {self.length} bytes")
        first, end = start // CHUNK, min(self.length, -(-stop // CHUNK) * CHUNK)
        data = bytearray(end - first * CHUNK)
        with self._lock:
            if self._fd < 0:
                return None
            try:
                read = _read_into(self._fd, data, first * CHUNK)
            except OSError:
                return None
        if read != len(data):
            return None
        with memoryview(data) as view:
            for at in range(0, len(view), CHUNK):
                if crc32c(view[at : at + CHUNK]) != _CRC.unpack_from(self._crcs, (first + at // CHUNK) * _CRC.size)[0]:
                    return None
        return memoryview(data)[start - first * CHUNK : stop - first * CHUNK]

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def remove_legacy(directory: Path) -> bool:
    """Remove an earlier version's diskcache of blocks in ``directory`` (``cache.db`` and its two-letter
    folders of value files), if there is one; whether there was."""
    if not (directory / "cache.db").exists():
        return False
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if entry.name.startswith("cache.db"):
                entry.unlink(missing_ok=True)
            elif entry.is_dir() and len(entry.name) == 2 and entry.name != _FORMAT:
                shutil.rmtree(entry, ignore_errors=True)
    return True


def remove_earlier_formats(directory: Path) -> bool:
    """Remove the block files of earlier formats of this tier in ``directory``; whether there were any."""
    earlier = [directory / name for name in _EARLIER_FORMATS if (directory / name).is_dir()]
    for folder in earlier:
        shutil.rmtree(folder, ignore_errors=True)
    return bool(earlier)


def clear(directory: Path) -> int:
    """Remove every block (safe while a mount uses the folder: it fetches again what is gone),
    and an earlier version's blocks; the number of blocks removed from the index."""
    remove_legacy(directory)
    remove_earlier_formats(directory)
    if not (directory / "index.sqlite").exists():
        return 0
    db = _connect(directory)
    removed = 0
    try:
        while rows := db.execute("SELECT name FROM blocks LIMIT 1000").fetchall():
            names = [name for (name,) in rows]
            gone = []
            for name in names:
                try:
                    os.unlink(_file_of(directory, name))
                except FileNotFoundError:
                    pass
                except OSError:  # open in another process, on Windows: it keeps its row
                    continue
                gone.append((name,))
            with db:
                db.executemany("DELETE FROM blocks WHERE name = ?", gone)
            removed += len(gone)
            if len(gone) < len(names):
                break  # what is left will not go now (the next clear or eviction tries again)
    finally:
        db.close()
    return removed


def _rename_into_place(temporary: Path, target: Path) -> None:
    """Move a written block file to its name. On Windows a block file another reader has open
    cannot be replaced: it holds the same bytes (a key names immutable bytes), so the new copy
    is dropped instead of failing the writer's batch."""
    try:
        os.replace(temporary, target)
    except PermissionError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if not target.exists():
            raise


class DiskTier:
    """Block files in ``directory``, capped at ``size_limit`` bytes, least recently used out first.

    Writes go through one writer thread: a fetch hands its block over and moves on. Blocks
    waiting to be written are served by :meth:`get`. The queue is bounded by bytes: background
    fetches wait for room (a bounded time), a demand read's block is dropped instead.
    """

    def __init__(
        self, directory: Path, size_limit: int, queue_bytes: int = 128 << 20, retry_interval: float = 30.0
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        first_of_format = not (directory / _FORMAT).exists()
        (directory / _FORMAT).mkdir(exist_ok=True, mode=0o700)
        self.directory = directory
        self.size_limit = size_limit
        self._db = _connect(directory)
        with self._db:
            if first_of_format:  # the rows are an earlier format's blocks (their files go in the sweep)
                self._db.execute("DELETE FROM blocks")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('size_limit', ?)", (size_limit,))
        self._total = self._stored_bytes()
        self._total_read_at = time.monotonic()
        self._effective_limit = size_limit
        #: After a failed write (a full disk, a removed folder) writes pause until this
        #: ``time.monotonic()`` value, then are tried again: a full disk is not remembered past
        #: the moment space is back. Reads go on meanwhile.
        self._paused_until = 0.0
        self._retry_interval = retry_interval
        self.write_failures = 0
        self.dropped = 0
        self._queue_bytes = queue_bytes
        self._condition = threading.Condition()
        self._pending: dict[str, tuple[str, Buffer | bytes, DiskWrite]] = {}  # name -> (key, block, how), in order
        self._direct = bool(_O_DIRECT)  # until a file system refuses it
        self._pending_bytes = 0
        self._touched: dict[str, int] = {}  # name -> access time, for the index
        self._forget: set[str] = set()  # names whose file and row must go (damaged, failed)
        self._adopting: dict[str, tuple[str, Path, int, threading.Event]] = {}  # name -> (key, file, length, done)
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="idcfs-disk-writer", daemon=True)
        self._writer.start()
        threading.Thread(target=self._sweep, name="idcfs-disk-sweep", daemon=True).start()

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: str, length: int) -> Buffer | bytes | None:
        """The block, if stored (or queued) whole and intact; a damaged one is a miss, and goes."""
        found = self._lookup(key, length, 0, length, whole=True)
        return None if found is None else found[0]

    def read(self, key: str, length: int, start: int, stop: int) -> Buffer | bytes | memoryview | None:
        """Bytes ``[start, stop)`` of the block of ``length`` bytes, if stored (or queued) and the
        chunks they touch are intact: a read of part of a block costs that part, not the block."""
        if not 0 <= start < stop <= length:
            raise ValueError(f"[{start}, {stop}) is not inside a block of {length} bytes")
        found = self._lookup(key, length, start, stop, whole=False)
        if found is None:
            return None
        data, base = found
        if start == base and stop - start == len(data):
            return data
        return memoryview(data)[start - base : stop - base]

    def _lookup(self, key: str, length: int, start: int, stop: int, whole: bool) -> tuple[Buffer | bytes, int] | None:
        """The block (``whole``), or the chunks of it that ``[start, stop)`` touches, and where
        in the block what is returned begins."""
        name = block_name(key)
        with self._condition:
            queued = self._pending.get(name)
        if queued is not None:
            return (queued[1], 0) if len(queued[1]) == length else None
        try:
            fd = os.open(_file_of(self.directory, name), os.O_RDONLY | _O_BINARY)
        except OSError:  # absent (the usual miss), or a disk in trouble: a miss either way
            return None
        # The chunks that [start, stop) touches; a part goes to a bytearray (writable, as the
        # FUSE layer's copy into its reply wants).
        first, end = start // CHUNK, min(length, -(-stop // CHUNK) * CHUNK)
        data: Buffer = new_buffer(length) if whole else bytearray(end - first * CHUNK)
        try:
            intact = _read_checked(fd, length, first, data)
        except OSError as error:
            log.debug("disk cache read of %s failed: %s", key, error)
            return None
        finally:
            os.close(fd)
        if not intact:
            log.warning("disk cache block %s is damaged; fetching it again", key)
            self.discard(key)
            return None
        with self._condition:
            if len(self._touched) < _MAX_TOUCHES:
                self._touched[name] = _now()
        return data, first * CHUNK

    # -- writes -----------------------------------------------------------------------------

    def put(self, key: str, data: Buffer | bytes, write: DiskWrite = KEEP) -> bool:
        """Queue ``data`` for writing, as ``write`` says: waiting for room or dropped when there
        is none; past the page cache where the file system allows. Whether it was queued (or
        was already)."""
        name = block_name(key)
        with self._condition:
            if name in self._pending:
                return True
            if self.paused or self._closed:
                return False
            give_up = time.monotonic() + PUT_WAIT_TIMEOUT
            while self._pending_bytes + len(data) > self._queue_bytes and self._pending:
                left = give_up - time.monotonic()
                if not write.wait or left <= 0:
                    self.dropped += 1
                    return False
                self._condition.wait(left)
                if self.paused or self._closed:
                    return False
            self._pending[name] = (key, data, write)
            self._pending_bytes += len(data)
            self._condition.notify_all()
            return True

    def adopt(self, key: str, path: Path, timeout: float) -> bool:
        """Keep the sealed file at ``path`` (see :func:`seal`) as the block ``key``: moved into
        the tier (same file system), indexed, counted in the cap and evicted like any block.
        Whether it was kept within ``timeout`` seconds (else the file is left where it is)."""
        length = _FOOTER.unpack(_tail(path))[0]
        done = threading.Event()
        with self._condition:
            if self.paused or self._closed:
                return False
            self._adopting[block_name(key)] = (key, path, length, done)
            self._condition.notify_all()
        return done.wait(timeout)

    def _adopt_files(self, adopting: dict[str, tuple[str, Path, int, threading.Event]]) -> None:
        """Index, then move into place (a crash leaves a row without its file, never the reverse)."""
        for name, (key, path, length, done) in adopting.items():
            try:
                self._fit_to_disk(0)
                with self._db:
                    self._db.execute("DELETE FROM blocks WHERE name = ?", (name,))
                    self._db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?)", (name, key, length, _now()))
                target = _file_of(self.directory, name)
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _rename_into_place(path, target)
            except Exception as error:  # noqa: BLE001 - the caller keeps its file and says why
                log.warning("disk cache %s cannot keep %s: %s", self.directory, key, error)
                with self._condition:
                    self._forget.add(name)
                continue
            self._total = self._stored_bytes()
            done.set()
        if self._total > self._effective_limit:
            self._evict()

    def stored_length(self, key: str) -> int | None:
        """The length of the block ``key`` as its file says (None when there is none): for a
        block whose length only the tier knows (a volume's file)."""
        try:
            stored = _FOOTER.unpack(_tail(_file_of(self.directory, block_name(key))))
        except (OSError, struct.error):
            return None
        return int(stored[0]) if stored[2] == _MAGIC and stored[1] == CHUNK else None

    def open_block(self, key: str, length: int) -> OpenBlock | None:
        """The stored block ``key`` of ``length`` bytes held open for many reads (close it), or
        None when there is none whole (a damaged one goes)."""
        try:
            fd = os.open(_file_of(self.directory, block_name(key)), os.O_RDONLY | _O_BINARY)
        except OSError:
            return None
        trailer = bytearray(_trailer_size(length) + 1)  # one more: a longer file is no such block
        try:
            whole = _read_into(fd, trailer, length) == len(trailer) - 1
        except OSError:
            whole = False
        footer = _FOOTER.unpack_from(trailer, len(trailer) - 1 - _FOOTER.size) if whole else None
        if footer != (length, CHUNK, _MAGIC):
            os.close(fd)
            if whole:
                self.discard(key)
            return None
        self.touch(key)
        return OpenBlock(fd, length, bytes(trailer[: -1 - _FOOTER.size]))

    def touch(self, key: str) -> None:
        """Note a use of the block ``key`` (kept by the LRU), as a read of it does."""
        with self._condition:
            if len(self._touched) < _MAX_TOUCHES:
                self._touched[block_name(key)] = _now()

    def discard(self, key: str) -> None:
        """Forget the block ``key`` (its file and its row), in the writer's next turn."""
        with self._condition:
            self._forget.add(block_name(key))
            self._condition.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._condition:
                if not (self._pending or self._forget or self._adopting or self._closed):
                    self._condition.wait(1.0)
                if self._closed and not self._pending:
                    break
                batch: list[_Queued] = []
                size = 0
                for name, (key, data, how) in self._pending.items():
                    if len(batch) == _BATCH_BLOCKS or (batch and size + len(data) > _BATCH_BYTES):
                        break
                    batch.append((name, key, data, how))
                    size += len(data)
                touched, self._touched = self._touched, {}
                forget, self._forget = self._forget, set()
                adopting, self._adopting = self._adopting, {}
            if adopting:
                self._adopt_files(adopting)
            self._one_turn(batch, size, touched, forget)
        with contextlib.suppress(Exception):
            self._index_touches(self._touched)
        self._db.close()

    def _one_turn(self, batch: list[_Queued], size: int, touched: dict[str, int], forget: set[str]) -> None:
        failed = False
        try:
            if forget:
                self._remove(sorted(forget))
            if touched:  # before any eviction: a block read since the last turn is recent
                self._index_touches(touched)
            if batch:
                self._fit_to_disk(size)
                self._write(batch)
            if self._total > self._effective_limit:
                self._evict()
        except Exception as error:  # noqa: BLE001 - degrade, never fail a read
            failed = True
            with self._condition:
                self.write_failures += 1
                self._forget.update(forget)
                # Rows of blocks not written are removed in a later turn (the disk may refuse even that now).
                self._forget.update(item[0] for item in batch)
                if not self.paused:
                    log.warning(
                        "disk cache %s cannot be written (%s); not caching on disk for %gs, then trying again",
                        self.directory,
                        error,
                        self._retry_interval,
                    )
                self._paused_until = time.monotonic() + self._retry_interval
        else:
            if batch and self._paused_until:
                self._paused_until = 0.0
                log.warning("disk cache %s is writable again", self.directory)
        with self._condition:
            for name, _, data, _ in batch:
                if self._pending.pop(name, None) is not None:
                    self._pending_bytes -= len(data)
            if failed:
                self._pending.clear()
                self._pending_bytes = 0
            self._condition.notify_all()

    def _write(self, batch: list[_Queued]) -> None:
        """Index the batch, then write its files (so a crash leaves rows without files, never
        files without rows)."""
        now = _now()
        with self._db:
            for i, (name, key, data, _) in enumerate(batch):  # + i: the order of the batch is the LRU's
                row = (name, key, len(data), now + i)
                if self._db.execute("INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?)", row).rowcount:
                    self._total += len(data)
        for name, _, data, how in batch:
            self._write_file(name, data, how)

    def _write_file(self, name: str, data: Buffer | bytes, how: DiskWrite) -> None:
        target = _file_of(self.directory, name)
        folder = target.parent
        temporary = folder / f"{name}.{os.getpid()}.tmp"
        # A page-aligned block (a mapping) is written past the page cache when asked: the DMA
        # reads it where it is, and no page-cache pages are allocated and reclaimed for it.
        aligned = len(data) & ~(_PAGE - 1) if how.direct and self._direct and isinstance(data, mmap.mmap) else 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_BINARY | (_O_DIRECT if aligned else 0)
        for _ in range(3):  # at most: the folder made, O_DIRECT dropped
            try:
                fd = os.open(temporary, flags, 0o600)
                break
            except FileNotFoundError:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as error:
                if not aligned or error.errno != errno.EINVAL:
                    raise
                self._direct = False  # a file system without O_DIRECT (ramfs): the page cache, then
                aligned, flags = 0, flags & ~_O_DIRECT
        else:
            fd = os.open(temporary, flags, 0o600)
        view = memoryview(data)
        try:
            trailer = _trailer(data)
            written = 0
            if aligned:
                written = _write_at(fd, [view[:aligned]], 0)
                _drop_direct(fd)  # the tail
            written += _write_at(fd, [view[aligned:], trailer], written)
            if written != len(data) + len(trailer):
                raise OSError(errno.ENOSPC, f"short write of {name}: {written} bytes")
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        finally:
            view.release()
        os.close(fd)
        _rename_into_place(temporary, target)

    def _index_touches(self, touched: dict[str, int]) -> None:
        with self._db:
            self._db.executemany("UPDATE blocks SET atime = ? WHERE name = ?", [(t, n) for n, t in touched.items()])

    def _remove(self, names: list[str]) -> None:
        """Delete the files and rows of ``names`` (a file that will not go keeps its row)."""
        gone = []
        for name in names:
            try:
                os.unlink(_file_of(self.directory, name))
            except FileNotFoundError:
                pass
            except OSError as error:
                log.debug("cannot remove disk cache block %s: %s", name, error)
                continue
            gone.append((name,))
        with self._db:
            for (name,) in gone:  # (no DELETE ... RETURNING: SQLite 3.35 or later only)
                row = self._db.execute("SELECT size FROM blocks WHERE name = ?", (name,)).fetchone()
                if row is not None:
                    self._db.execute("DELETE FROM blocks WHERE name = ?", (name,))
                    self._total -= row[0]

    def _evict(self) -> None:
        """Least recently used blocks out until the tier fits its limit. The total is first read
        again from the index (every few seconds at most: it is a scan): another mount sharing the
        folder, or ``idcfs cache clear``, changes it."""
        if time.monotonic() - self._total_read_at > _TOTAL_REREAD:
            self._total = self._stored_bytes()
            self._total_read_at = time.monotonic()
        while self._total > self._effective_limit:
            rows = self._db.execute("SELECT name, size FROM blocks ORDER BY atime LIMIT 256").fetchall()
            if not rows:
                break
            names, excess = [], self._total - self._effective_limit
            for name, size in rows:  # just enough of the oldest
                if excess <= 0:
                    break
                names.append(name)
                excess -= size
            before = self._total
            self._remove(names)
            if self._total == before:
                break  # nothing could be removed: try again next turn

    def _stored_bytes(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM blocks").fetchone()[0])

    def _fit_to_disk(self, incoming: int) -> None:
        """Cap the tier at what the disk can hold now, so writes do not meet a full disk: the
        configured size, or less when other files take the space (LRU blocks go first)."""
        usage = shutil.disk_usage(self.directory)
        if usage.total == 0:  # a file system that reports no size (ramfs): only the cap applies
            self._effective_limit = self.size_limit
            return
        reserve = min(DISK_RESERVE, usage.total // 20)
        self._effective_limit = max(0, min(self.size_limit, self._total + usage.free - incoming - reserve))
        if self._total + incoming > self._effective_limit:
            saved, self._effective_limit = self._effective_limit, max(0, self._effective_limit - incoming)
            self._evict()
            self._effective_limit = saved

    def _sweep(self) -> None:
        """Remove what a crash, or an older idcfs, left: temporary files, diskcache's folder."""
        if remove_legacy(self.directory):
            log.info("removed the disk cache of an earlier idcfs version in %s", self.directory)
        if remove_earlier_formats(self.directory):
            log.info("removed the disk cache blocks of an earlier idcfs version in %s", self.directory)
        stale = time.time() - _STALE_TEMPORARY
        with contextlib.suppress(OSError):
            for folder in os.scandir(self.directory / _FORMAT):
                with contextlib.suppress(OSError), os.scandir(folder.path) as entries:
                    for entry in entries:
                        if entry.name.endswith(".tmp") and entry.stat().st_mtime < stale:
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)

    # -- state ------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Writes are off for now, after a failure."""
        return time.monotonic() < self._paused_until

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued block is written (or the tier gave up); False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._pending, timeout)

    @property
    def bytes_used(self) -> int:
        """Bytes stored (not counting blocks still queued for writing)."""
        return self._total

    @property
    def capacity(self) -> int:
        return self.size_limit

    def close(self) -> None:
        self.flush(timeout=30)
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._writer.join(timeout=10)
