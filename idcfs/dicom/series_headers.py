"""The headers of a series' instances, read once and kept in the cache folder for good.

The first time a series' instances are asked for (a search of its instances, its metadata, a
frame), every object's header is read in parallel through the block cache and the series'
record written whole (under a temporary name, then renamed: a crash leaves no half record); after
that, in this process or the next, it is read from disk. A record that cannot be written (a full
disk) is an error the client is told of; nothing is half kept. A record is one line per instance: the
instance's summary as JSON, a tab, and its metadata as the DICOM JSON it is answered with, so a
series' ``/metadata`` is the stored text joined, never parsed again. In memory, only summaries
and where each metadata lies, for a bounded number of instances.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cachetools import LRUCache

from idcfs.blocks.singleflight import SingleFlight
from idcfs.dicom.header import InstanceHeader, NotDicom, read_header

log = logging.getLogger(__name__)

#: Bump when a record's layout or meaning changes: older records are read again, not misread.
FORMAT = 1
#: Objects whose headers are read at once (each a read of the object's first block(s)).
READERS = 16
#: Instances whose summaries are kept in memory, over all series (~300 bytes each).
INSTANCES_KEPT = 200_000
#: Reads in flight for one series (their lines wait in memory until written in order).
AHEAD = 4 * READERS
#: The longest a caller waits for a series' headers another request is reading.
READ_TIMEOUT = 600.0


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


class SeriesHeaders:
    """Each series' :class:`SeriesIndex`, read once per series by one caller at a time."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._kept: LRUCache[str, SeriesIndex] = LRUCache(maxsize=INSTANCES_KEPT, getsizeof=lambda i: max(1, len(i)))
        self._reading: SingleFlight[SeriesIndex] = SingleFlight(READ_TIMEOUT)  # one reader a series
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(READERS, thread_name_prefix="idcfs-headers")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def get(
        self,
        series_uuid: str,
        series_url: str,
        objects: Callable[[], list[tuple[str, int]]],
        open_object: Callable[[str], BinaryIO],
    ) -> SeriesIndex:
        """The series' headers: kept, on disk, or read now (``objects``: its files' names and
        sizes; ``open_object``: one of them as a binary file). Raises OSError when the store
        cannot be read (nothing is remembered of it: the next call tries again)."""
        with self._lock:
            kept = self._kept.get(series_uuid)
        if kept is not None:
            return kept

        def load_or_read() -> SeriesIndex:
            index = self._load(series_uuid) or self._read(series_uuid, series_url, objects, open_object)
            with self._lock:
                self._kept[series_uuid] = index
            return index

        return self._reading.run(series_uuid, load_or_read)

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
        self,
        series_uuid: str,
        series_url: str,
        objects: Callable[[], list[tuple[str, int]]],
        open_object: Callable[[str], BinaryIO],
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
        try:
            with open(temporary, "wb") as record:
                # In the listing's order, a window of reads ahead: memory holds the lines of the
                # reads in flight, whatever the series' size.
                for name, size in listed:
                    pending.append(self._pool.submit(one, name, size))
                    if len(pending) >= AHEAD:
                        record.write(pending.popleft().result(READ_TIMEOUT))
                while pending:
                    record.write(pending.popleft().result(READ_TIMEOUT))
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        finally:
            for future in pending:
                future.cancel()
        return _parse(path)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


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
            fields["fragments"] = {int(k): [tuple(p) for p in v] for k, v in fields["fragments"].items()}
            instances.append(InstanceHeader(**fields, metadata={}))
            start = offset + len(summary) + 1
            spans.append((start, len(metadata) - 1))
            offset += len(line)
    return SeriesIndex(path, instances, spans, {h.sop_instance_uid: k for k, h in enumerate(instances)})
