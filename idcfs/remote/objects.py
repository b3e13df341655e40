"""The objects under one prefix (a series), as a LIST gives them: names, exact sizes, ETags.

A listing of IDC's largest series is 91,980 objects, and a ``find`` reads thousands of them. As
one Python object (and two strings) an object, a listing's 180,000 small allocations outlive
the parsing around them and leave the allocator's arenas pinned, half empty, long after the
listing itself is gone: a ``find`` over 500,000 objects grew the daemon by ~270 MB. So a table
is built page by page into a few large buffers (names and ETags as :class:`NameArray`, sizes as
an ``array``), and its disk form is those buffers as they are: loading one is a handful of
allocations, however many objects it holds.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from idcfs.util.names import NameArray, NameArrayBuilder


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object of a series: its name inside the series folder, exact size, ETag."""

    name: str
    size: int
    etag: str


#: First line of a table's disk form; the second is a JSON header with the buffers' lengths.
_MAGIC = b"idcfs-objects 1\n"


@dataclass(frozen=True)
class ObjectTable:
    """Objects sorted bytewise by name (the order S3 and GCS list them in)."""

    names: NameArray
    sizes: array  # of int64, by position
    etags: NameArray

    @classmethod
    def of(cls, objects: Iterable[ObjectInfo]) -> ObjectTable:
        builder = ObjectTableBuilder()
        builder.extend(objects)
        return builder.build()

    def __len__(self) -> int:
        return len(self.sizes)

    def info(self, k: int) -> ObjectInfo:
        return ObjectInfo(self.names.get(k), self.sizes[k], self.etags.get(k))

    def __iter__(self) -> Iterator[ObjectInfo]:
        return (self.info(k) for k in range(len(self)))

    def to_bytes(self) -> bytes:
        """The plain disk form: a magic line, a JSON line of counts, then the raw buffers
        (little-endian int64 offsets and sizes, UTF-8 names and ETags)."""
        header = {"count": len(self), "names": len(self.names.data), "etags": len(self.etags.data)}
        parts = [_MAGIC, json.dumps(header).encode(), b"\n"]
        for column in (self.names, self.etags):
            parts += [_little_endian(column.offsets), bytes(column.data)]
        parts.append(_little_endian(self.sizes))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ObjectTable:
        """The table :meth:`to_bytes` wrote; ValueError for anything else (a damaged entry)."""
        if not data.startswith(_MAGIC):
            raise ValueError("not an object table")
        end = data.index(b"\n", len(_MAGIC))
        header = json.loads(data[len(_MAGIC) : end])
        count = int(header["count"])
        view, pos = memoryview(data), end + 1
        columns = []
        for key in ("names", "etags"):
            offsets = _int64s(view[pos : pos + 8 * (count + 1)])
            pos += 8 * (count + 1)
            columns.append(NameArray(offsets, view[pos : pos + int(header[key])]))
            pos += int(header[key])
        sizes = array("q")
        sizes.frombytes(view[pos : pos + 8 * count])
        if sys.byteorder == "big":
            sizes.byteswap()
        if pos + 8 * count != len(data) or any(len(c.data) != c.offsets[-1] for c in columns):
            raise ValueError("object table truncated or damaged")
        return cls(columns[0], sizes, columns[1])


class ObjectTableBuilder:
    """Collects the objects of a listing, page after page, into a table's buffers."""

    def __init__(self) -> None:
        self._names = NameArrayBuilder()
        self._etags = NameArrayBuilder()
        self._sizes = array("q")
        self._last = b""
        self._sorted = True

    def add(self, name: str, size: int, etag: str) -> None:
        encoded = name.encode()
        if encoded < self._last:
            self._sorted = False
        self._last = encoded
        self._names.append(encoded)
        self._etags.append(etag.encode())
        self._sizes.append(size)

    def extend(self, objects: Iterable[ObjectInfo]) -> None:
        for o in objects:
            self.add(o.name, o.size, o.etag)

    def build(self) -> ObjectTable:
        table = ObjectTable(self._names.build(), self._sizes, self._etags.build())
        return table if self._sorted else sorted_table(table)


def sorted_table(table: ObjectTable) -> ObjectTable:
    """The same objects sorted bytewise by name (a server that lists out of order)."""
    order = sorted(range(len(table)), key=table.names.get_bytes)
    names, etags = NameArrayBuilder(), NameArrayBuilder()
    for k in order:
        names.append(table.names.get_bytes(k))
        etags.append(table.etags.get_bytes(k))
    return ObjectTable(names.build(), array("q", (table.sizes[k] for k in order)), etags.build())


def _little_endian(values: memoryview | array) -> bytes:
    if sys.byteorder == "little":
        return bytes(memoryview(values))
    copy = array("q", values)  # pragma: no cover - no big-endian machine runs the tests
    copy.byteswap()
    return copy.tobytes()


def _int64s(raw: memoryview) -> memoryview:
    if sys.byteorder == "big":  # pragma: no cover - no big-endian machine runs the tests
        swapped = array("q", raw.tobytes())
        swapped.byteswap()
        return memoryview(swapped)
    return raw.cast("q")
