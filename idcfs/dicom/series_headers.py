"""The headers of a series' instances, read once and kept in the cache folder for good.

The first time a series' instances are asked for (a search of its instances, its metadata, a
frame), every object's header is read in parallel (as its opener says: through the block cache,
or straight from the store) and the series' record written whole (under a temporary name, then
renamed: a crash leaves no half record); after that, in this process or the next, it is read
from disk. The read goes on in a thread of its own, whoever asked: a client gone before it ends
leaves it to finish and be kept. A ``/metadata`` asked for while its series is read follows the
read, instance by instance, from the lines the read keeps in memory for it (the latest, up to
:data:`FOLLOWED_BYTES`); one that is behind them (it joined late, or its client reads slowly)
reads the lines it lacks from the record being written, then the record once it is whole. A
series of tens of thousands of instances answers from its first instances on, not after its
last, to every client. A record that cannot be written (a full disk) is an error the client is told
of; nothing is half kept. A record is one line per instance: the instance's summary as JSON, a
tab, and its metadata as the DICOM JSON it is answered with, so a series' ``/metadata`` is the
stored text joined, never parsed again. In memory, only summaries and where each metadata lies,
for a bounded number of instances.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cachetools import LRUCache

from idcfs.dicom.header import InstanceHeader, NotDicom, read_header
from idcfs.remote.errors import StoreError

log = logging.getLogger(__name__)

#: Bump when a record's layout or meaning changes: older records are read again, not misread.
FORMAT = 2  # 2: a value in a sequence's item has its own BulkDataURI
#: Objects whose headers are read at once (each a read of the object's first block(s)).
READERS = 16
#: Instances whose summaries are kept in memory, over all series (under 1 KB each).
INSTANCES_KEPT = 200_000
#: Reads in flight for one series (their lines wait in memory until written in order).
AHEAD = 4 * READERS
#: The longest a caller waits for a series' headers (or for the next of them) being read.
READ_TIMEOUT = 600.0
#: The latest lines of a series being read kept in memory for the answers that follow the
#: read (bytes; an answer further behind reads the record being written).
FOLLOWED_BYTES = 8 << 20
#: The most of a record being written one follower reads at a time (bytes), holding up the
#: writer meanwhile: a file another holds open cannot be renamed on Windows.
READ_AT_ONCE = 1 << 20
#: A temporary record this much older than its last line is left over from a process gone
#: (a live read writes a line at least every READ_TIMEOUT, or gives up).
STALE_TEMPORARY = 2 * READ_TIMEOUT

#: An empty item in a series' metadata: what came before may be sent now (the next may be a
#: while: it is being read).
PAUSE = b""

#: A series' files (names and sizes), and one of them opened as a binary file.
Objects = Callable[[], list[tuple[str, int]]]
OpenObject = Callable[[str], BinaryIO]


@dataclass
class SeriesIndex:
    """A series' instances (summaries, in the listing's order) and its record on disk."""

    path: Path
    instances: list[InstanceHeader]
    spans: list[tuple[int, int]]  # where each instance's metadata lies in the record
    by_sop: dict[str, int]

    def __len__(self) -> int:
        return len(self.instances)

    def metadata(self, positions: list[int] | None = None) -> Iterator[bytes]:
        """The stored DICOM JSON of the instances at ``positions`` (all when None), in order."""
        with open(self.path, "rb") as record:
            for position in range(len(self.instances)) if positions is None else positions:
                offset, length = self.spans[position]
                record.seek(offset)
                yield record.read(length)


class _Reading:
    """A series whose headers are being read: how many instances are read so far, the latest
    of their metadata (for the answers following the read), the record being written (for
    those behind them), and the index once it is done."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.count = 0
        #: The latest instances' metadata, each with where its line ends in the record.
        self.recent: deque[tuple[bytes, int]] = deque()
        self._recent_bytes = 0
        self._record: Path | None = None  # the temporary record, while it is written
        self._written = 0  # bytes of whole lines in it
        self.done: Future[SeriesIndex] = Future()

    def writing(self, record: Path) -> None:
        with self.changed:
            self._record = record

    def add(self, metadata: bytes, written: int) -> None:
        """An instance's metadata, whose line (flushed) ends ``written`` bytes into the record."""
        with self.changed:
            self.recent.append((metadata, written))
            self._recent_bytes += len(metadata)
            while self._recent_bytes > FOLLOWED_BYTES and len(self.recent) > 1:
                self._recent_bytes -= len(self.recent.popleft()[0])
            self._written = written
            self.count += 1
            self.changed.notify_all()

    def written(self, settle: Callable[[], None]) -> None:
        """The record is written (or given up): ``settle`` (its rename, or its removal) runs
        while no follower has it open."""
        with self.changed:
            self._record = None
            settle()

    def finish(self, outcome: SeriesIndex | BaseException) -> None:
        with self.changed:
            if isinstance(outcome, SeriesIndex):
                self.done.set_result(outcome)
            else:
                self.done.set_exception(outcome)
            self.changed.notify_all()

    def index(self) -> SeriesIndex:
        try:
            return self.done.result(READ_TIMEOUT)
        except FutureTimeout:
            raise StoreError(f"gave up waiting {READ_TIMEOUT:g}s for a series' headers") from None

    def follow(self) -> Iterator[bytes]:
        """The metadata of each instance as it is read (from memory, or from the record being
        written when behind what memory keeps), then from the whole record once the read is
        done; :data:`PAUSE` where the next may be a while."""
        position = offset = 0  # instances taken, and where the last one's line ends
        while True:
            with self.changed:
                while position >= self.count and not self.done.done():
                    if not self.changed.wait(READ_TIMEOUT):
                        raise StoreError(f"no header read for {READ_TIMEOUT:g}s")
                behind = self.count - position  # the lines not yet taken: the newest ``behind``
                if behind <= len(self.recent):
                    fresh = [self.recent[-k] for k in range(behind, 0, -1)]
                else:
                    fresh = self._lines_from(offset)
            if not fresh:
                break  # done (or its record unreadable): the rest from the whole record
            yield from (metadata for metadata, _ in fresh)
            position += len(fresh)
            offset = fresh[-1][1]
            with self.changed:
                waits = position >= self.count and not self.done.done()
            if waits:  # nothing more at hand: what came may go now
                yield PAUSE
        index = self.index()
        if position < len(index):
            yield from index.metadata(list(range(position, len(index))))

    def _lines_from(self, offset: int) -> list[tuple[bytes, int]]:
        """(With ``changed`` held.) The lines of the record being written from ``offset``, up
        to :data:`READ_AT_ONCE` bytes of them. None when it is not being written any more, or
        cannot be read (logged): the answer then waits for the whole record."""
        lines: list[tuple[bytes, int]] = []
        if self._record is None:
            return lines
        try:
            with open(self._record, "rb") as record:
                record.seek(offset)
                start = offset
                while offset < self._written and offset - start < READ_AT_ONCE:
                    line = record.readline()
                    if not line.endswith(b"\n"):
                        raise OSError(f"a line cut short at byte {offset}")
                    offset += len(line)
                    lines.append((_metadata_of(line), offset))
        except OSError as error:
            log.warning(
                "header record %s unreadable while written (%s): an answer waits for its end", self._record.name, error
            )
        return lines


class SeriesHeaders:
    """Each series' :class:`SeriesIndex`, read once per series (in a thread of its own)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._kept: LRUCache[str, SeriesIndex] = LRUCache(maxsize=INSTANCES_KEPT, getsizeof=lambda i: max(1, len(i)))
        self._reading: dict[str, _Reading] = {}  # one read a series at a time
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(READERS, thread_name_prefix="idcfs-headers")
        threading.Thread(target=self._sweep, name="idcfs-headers-sweep", daemon=True).start()

    def _sweep(self) -> None:
        """Remove the temporary records of reads whose process is gone (a live read writes its
        record line after line: its file is never long unchanged), and records of an older
        format (never read again: their series are read anew)."""
        now, current = time.time(), f".v{FORMAT}.headers"
        with contextlib.suppress(OSError):  # (a folder gone meanwhile: nothing to sweep there)
            for path in self._folder.glob("*/*.headers*"):
                with contextlib.suppress(OSError):
                    if path.name.startswith("."):  # a temporary record
                        if now - path.stat().st_mtime > STALE_TEMPORARY:
                            path.unlink()
                    elif not path.name.endswith(current):
                        path.unlink()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def get(self, series_uuid: str, series_url: str, objects: Objects, open_object: OpenObject) -> SeriesIndex:
        """The series' headers: kept, on disk, or read now (``objects``: its files' names and
        sizes; ``open_object``: one of them as a binary file). Raises OSError when the store
        cannot be read (nothing is remembered of it: the next call tries again)."""
        found = self._kept_or_read(series_uuid, series_url, objects, open_object)
        return found if isinstance(found, SeriesIndex) else found.index()

    def metadata(self, series_uuid: str, series_url: str, objects: Objects, open_object: OpenObject) -> Iterator[bytes]:
        """The stored DICOM JSON of each of the series' instances, in order: kept, on disk, or
        as each is read (the same errors as :meth:`get`, raised by the iterator)."""
        found = self._kept_or_read(series_uuid, series_url, objects, open_object)
        return found.metadata() if isinstance(found, SeriesIndex) else found.follow()

    def _kept_or_read(
        self, series_uuid: str, series_url: str, objects: Objects, open_object: OpenObject
    ) -> SeriesIndex | _Reading:
        """The series' index when it is kept; else the read of it (under way, or started now)."""
        with self._lock:
            kept = self._kept.get(series_uuid)
            if kept is not None:
                return kept
            found = self._reading.get(series_uuid)
            if found is not None:
                return found
            reading = self._reading[series_uuid] = _Reading()
        try:
            threading.Thread(
                target=self._load_or_read,
                args=(series_uuid, series_url, objects, open_object, reading),
                name="idcfs-series-headers",
                daemon=True,
            ).start()
        except BaseException as error:  # (no thread to be had): nobody is left waiting on it
            self._settle(series_uuid, reading, error)
            raise
        return reading

    def _load_or_read(
        self, series_uuid: str, series_url: str, objects: Objects, open_object: OpenObject, reading: _Reading
    ) -> None:
        outcome: SeriesIndex | BaseException
        try:
            loaded = self._load(series_uuid)  # (an index of no instance is falsy: not `or`)
            if loaded is None:
                loaded = self._read(series_uuid, series_url, objects, open_object, reading)
            outcome = loaded
        except BaseException as error:  # handed to every caller waiting on the read
            outcome = error
        self._settle(series_uuid, reading, outcome)

    def _settle(self, series_uuid: str, reading: _Reading, outcome: SeriesIndex | BaseException) -> None:
        """The read is over: its index kept (a failure is not remembered), its callers told."""
        try:
            with self._lock:
                self._reading.pop(series_uuid, None)
                if isinstance(outcome, SeriesIndex):
                    with contextlib.suppress(ValueError):  # more instances than are kept at all
                        self._kept[series_uuid] = outcome
        finally:
            reading.finish(outcome)

    def _record(self, series_uuid: str) -> Path:
        return self._folder / series_uuid[:2] / f"{series_uuid}.v{FORMAT}.headers"

    def _load(self, series_uuid: str) -> SeriesIndex | None:
        path = self._record(series_uuid)
        try:
            return _parse(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("a damaged header record (%s): reading the series' headers again", error)
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def _read(
        self, series_uuid: str, series_url: str, objects: Objects, open_object: OpenObject, reading: _Reading
    ) -> SeriesIndex:
        def one(name: str, size: int) -> bytes:
            """The instance's line of the record (empty when the object is not DICOM)."""
            with contextlib.closing(open_object(name)) as stream:
                try:
                    header = read_header(stream, name, size, series_url)
                except NotDicom as error:
                    log.warning("not an instance of series %s: %s", series_uuid, error)
                    return b""
            summary = dataclasses.asdict(header)
            del summary["metadata"]
            return b"%b\t%b\n" % (_json(summary), _json(header.metadata))

        listed = objects()
        path = self._record(series_uuid)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        pending: deque[Future[bytes]] = deque()
        written = 0
        try:
            with open(temporary, "wb") as record:
                reading.writing(temporary)

                # In the listing's order, a window of reads ahead: memory holds the lines of the
                # reads in flight, whatever the series' size.
                def write_next() -> None:
                    nonlocal written
                    try:
                        line = pending.popleft().result(READ_TIMEOUT)
                    except FutureTimeout:
                        raise StoreError(f"a header not read in {READ_TIMEOUT:g}s") from None
                    if line:
                        record.write(line)
                        record.flush()  # whole lines on disk for the followers behind
                        written += len(line)
                        reading.add(_metadata_of(line), written)

                for name, size in listed:
                    pending.append(self._pool.submit(one, name, size))
                    if len(pending) >= AHEAD:
                        write_next()
                while pending:
                    write_next()
            reading.written(lambda: os.replace(temporary, path))
        except BaseException:
            with contextlib.suppress(OSError):
                reading.written(temporary.unlink)
            raise
        finally:
            for future in pending:
                future.cancel()
        return _parse(path)


def _metadata_of(line: bytes) -> bytes:
    """A record line's metadata: after the summary's tab, without the newline."""
    return line[line.index(b"\t") + 1 : -1]


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


#: An instance's metadata, or its fragments when it has none, as kept in memory: one empty
#: mapping for all (never changed: the headers are frozen).
_NONE: dict = {}


def _parse(path: Path) -> SeriesIndex:
    instances: list[InstanceHeader] = []
    spans: list[tuple[int, int]] = []
    with open(path, "rb") as record:
        offset = 0
        for line in record:
            summary, tab, metadata = line.partition(b"\t")
            if not tab or not line.endswith(b"\n"):
                raise ValueError(f"{path.name}: a line is cut short")
            fields = json.loads(summary)
            fields["frame_offsets"] = [tuple(pair) for pair in fields["frame_offsets"]]
            fragments = fields["fragments"]
            fields["fragments"] = {int(k): [tuple(p) for p in v] for k, v in fragments.items()} if fragments else _NONE
            for shared in ("sop_class_uid", "transfer_syntax"):  # the same few values all along a series
                fields[shared] = sys.intern(fields[shared])
            instances.append(InstanceHeader(**fields, metadata=_NONE))
            start = offset + len(summary) + 1
            spans.append((start, len(metadata) - 1))
            offset += len(line)
    return SeriesIndex(path, instances, spans, {h.sop_instance_uid: k for k, h in enumerate(instances)})
