"""What DICOMweb answers from a series' instance headers (:mod:`idcfs.dicom`): the search of a
series' instances, ``/metadata`` at each level, frames cut out of the stored bytes, bulk data.

A series' headers are read once, the first time one of these is asked for, and kept in the cache
folder; everything here after that reads that record and, for frames, the frames' bytes only.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import pydicom

from idcfs.blocks.object_file import ObjectFile, StoreFile
from idcfs.dicom.header import BASE, InstanceHeader, value_at
from idcfs.dicom.series_headers import PAUSE, Objects, OpenObject, SeriesHeaders, SeriesIndex
from idcfs.dicomweb.attributes import record
from idcfs.dicomweb.media import NotAcceptable, media_ranges, multipart
from idcfs.dicomweb.query import Query, QueryError
from idcfs.dicomweb.rendered import RenderOptions, render
from idcfs.dicomweb.search import CHARACTER_SET, LOOKUPS_KEPT, CatalogSearch
from idcfs.vfs.body import FileStream
from idcfs.vfs.files import File
from idcfs.vfs.vfs import Vfs

#: Objects up to this size have their header read in blocks of HEADER_BLOCK bytes of its own.
SMALL_OBJECT = 8 << 20
HEADER_BLOCK = 64 << 10

#: The media type of an encapsulated frame, by its transfer syntax (PS3.18 table 8.7.3-5).
_FRAME_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
_FRAME_LIST = re.compile(r"^[1-9][0-9]*(,[1-9][0-9]*)*$")


@dataclass(frozen=True)
class SeriesAt:
    """A series of the catalog, where its files are in the tree and its URL in the service."""

    row: int
    uuid: str
    folder: str
    study: str
    series: str
    modality: str | None


class Instances:
    """Instance-level answers over ``vfs`` (the files) and ``headers`` (what is in them)."""

    def __init__(self, vfs: Vfs, search: CatalogSearch, headers: SeriesHeaders) -> None:
        self._vfs = vfs
        self._search = search
        self._headers = headers
        # A viewer asks for a series' frames one request each: its place is found once.
        self.series_at = functools.lru_cache(maxsize=LOOKUPS_KEPT)(self._series_at)

    def _series_at(self, row: int) -> SeriesAt:
        series = self._vfs.series  # the rows in use, kept at hand
        return SeriesAt(
            row,
            series.uuid(row),
            "/".join(self._vfs.tree.path_of_row(row)),
            str(self._search.value(row, "StudyInstanceUID")),
            str(self._search.value(row, "SeriesInstanceUID")),
            series.modality(row),
        )

    def files(self, at: SeriesAt) -> list[tuple[str, int]]:
        """The series' files, names and exact sizes, from its listing."""
        return [(name, size) for name, is_dir, size in self._vfs.list_sized(at.folder) if not is_dir]

    def index(self, at: SeriesAt) -> SeriesIndex:
        return self._headers.get(*self._header_source(at))

    def _header_source(self, at: SeriesAt) -> tuple[str, str, Objects, OpenObject]:
        """What the series' headers are read from: its UUID, URL, files, and a way to open one."""

        def open_object(name: str) -> BinaryIO:
            # A small object's header (a CT or MR slice) is read in small blocks, straight from
            # the store: the series' headers cost a block of each object, not the objects whole
            # (a viewer waits for every header before its first image; on a slow line that is
            # most of its wait). An object the cache holds already, or a large one (a slide
            # level, whose items may be walked for frame offsets), is read through the tree's.
            ref = self._vfs.object_ref(f"{at.folder}/{name}")
            main = self._vfs.reader
            first = main.block_key(ref, 0)
            if main.cache.contains(first) or main.cache.in_flight(first) or ref.size > SMALL_OBJECT:
                raw: io.RawIOBase = ObjectFile(main, ref)
            else:
                raw = StoreFile(main.store, ref, HEADER_BLOCK)
            return cast(BinaryIO, io.BufferedReader(raw, 16 << 10))

        series_url = f"{BASE}/studies/{at.study}/series/{at.series}"
        return at.uuid, series_url, lambda: self.files(at), open_object

    # -- QIDO: a series' instances ------------------------------------------------------------

    def search(
        self, series: list[SeriesAt], query: Query, base: str, warnings: list[str]
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the instances of ``series`` that ``query``'s instance-level keys match."""
        wanted = {*INSTANCE_DEFAULT, *(k for k in query.include if k in INSTANCE_EXTRA)}
        if query.include_all:
            wanted |= set(INSTANCE_EXTRA)
        chosen: list[tuple[SeriesAt, InstanceHeader]] = []
        end = query.offset + query.limit
        more = False
        for at in series:
            for header in self.index(at).instances:
                if all(_matches(header, k, v, warnings) for k, v in query.matches.items() if k in INSTANCE_KEYS):
                    if len(chosen) == end:
                        more = True
                        break
                    chosen.append((at, header))
            if more:
                break
        records = [
            record({k: v for k, v in _instance_values(at, h, base).items() if k in wanted})
            for at, h in chosen[query.offset :]
        ]
        return records, more

    # -- metadata -----------------------------------------------------------------------------

    def metadata(self, series: list[SeriesAt], base: str, sop: str | None = None) -> Iterator[bytes] | None:
        """The JSON array of the instances' metadata, streamed (each series' as its headers are
        read, the first time); None when ``sop`` is not there."""
        if sop is not None:
            index = self.index(series[0])
            if sop not in index.by_sop:
                return None
            return _array(_rebased(index.metadata([index.by_sop[sop]]), base))
        each = (self._headers.metadata(*self._header_source(at)) for at in series)
        return _array(_rebased((item for items in each for item in items), base))

    # -- an instance and its frames -----------------------------------------------------------

    def instance(self, at: SeriesAt, sop: str) -> InstanceHeader | None:
        index = self.index(at)
        position = index.by_sop.get(sop)
        return None if position is None else index.instances[position]

    def frames(self, at: SeriesAt, header: InstanceHeader, wanted: str, accept: str) -> tuple[str, int, Iterator[Any]]:
        """The frames ``wanted`` (``1,3,5``) of an instance as stored: native frames raw,
        encapsulated frames as their fragments' bytes, the transfer syntax on each part."""
        if not _FRAME_LIST.match(wanted):
            raise QueryError("frames are listed as 1-based numbers separated by commas")
        numbers = [int(n) for n in wanted.split(",")]
        if any(n > header.frames for n in numbers):
            raise LookupError(f"the instance has {header.frames} frames")
        kind = _frame_type(header.transfer_syntax, accept)
        part_type = f"{kind}; transfer-syntax={header.transfer_syntax}"
        opened: list[File] = []  # opened when the body is first sent (a HEAD never opens it)

        def body_of(part: int) -> Iterator[bytes]:
            if not opened:
                opened.append(self._vfs.open(f"{at.folder}/{header.name}"))
            return _frame_bytes(opened[0], header, numbers[part])

        def close() -> None:
            if opened:
                opened[0].close()

        parts = [(part_type, header.frame_offsets[n - 1][1]) for n in numbers]
        content_type, length, body = multipart(kind, parts, body_of)
        return content_type, length, _closing(body, close)

    def rendered(self, at: SeriesAt, header: InstanceHeader, number: str, media: str, options: RenderOptions) -> bytes:
        """Frame ``number`` of an instance, decoded and rendered as ``media`` (see
        :mod:`idcfs.dicomweb.rendered`)."""
        if not _FRAME_LIST.match(number) or "," in number:
            raise QueryError("a rendered frame is one 1-based number")
        if header.frames < 1:
            raise NotAcceptable("the instance has no image to render")
        if int(number) > header.frames:
            raise LookupError(f"the instance has {header.frames} frames")
        opened = self._vfs.open(f"{at.folder}/{header.name}")
        with FileStream(opened) as stream:  # (closes ``opened``)
            dataset = pydicom.dcmread(stream, stop_before_pixels=True)

            def frame() -> list[bytes]:  # read once the rendering has its turn
                return list(_frame_bytes(opened, header, int(number)))

            return render(dataset, frame, header.transfer_syntax, media, options)

    def bulk(self, at: SeriesAt, header: InstanceHeader, place: list[str]) -> bytes | None:
        """The value a BulkDataURI stands for (``place``: its tag, or its sequences' tags and
        item numbers and its tag), read again from the header (its blocks are cached by now)."""
        with FileStream(self._vfs.open(f"{at.folder}/{header.name}")) as stream:
            dataset = pydicom.dcmread(stream, stop_before_pixels=True)
        value = value_at(dataset, place)
        return bytes(value) if isinstance(value, (bytes, bytearray)) else None


def _frame_type(syntax: str, accept: str) -> str:
    """The media type frames of ``syntax`` are sent as, if ``accept`` takes it."""
    kind = "application/octet-stream" if syntax in _NATIVE else _FRAME_TYPES.get(syntax, "application/octet-stream")
    for name, options in media_ranges(accept):
        if name in ("*/*", "multipart/*", "multipart/related"):
            asked = options.get("type", "*/*")
            if asked in ("*/*", kind) and options.get("transfer-syntax", "*") in ("*", syntax):
                return kind
    raise NotAcceptable(f"the frames are sent as stored: {kind}, transfer syntax {syntax} (no transcoding)")


def _frame_bytes(opened: File, header: InstanceHeader, number: int) -> Iterator[bytes]:
    """Frame ``number``'s stored bytes: a native frame, or an encapsulated frame's fragments."""
    for offset, size in header.fragments.get(number - 1) or [header.frame_offsets[number - 1]]:
        data = opened.read(offset, size)
        if len(data) != size:
            raise OSError(f"{header.name} ends inside frame {number}")
        yield bytes(data)


def _closing(body: Iterator[Any], close: Callable[[], None]) -> Iterator[Any]:
    try:
        yield from body
    finally:
        close()


#: Keys matched on each instance's header; the others on its series' row of the catalog.
INSTANCE_KEYS = frozenset({"SOPInstanceUID", "SOPClassUID", "InstanceNumber"})
#: An instance's attributes in every answer (PS3.18 table 10.6.3-5), and those ``includefield``
#: may add.
INSTANCE_DEFAULT = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "RetrieveURL",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
)
INSTANCE_EXTRA = ("AvailableTransferSyntaxUID",)


def _matches(header: InstanceHeader, keyword: str, value: str, warnings: list[str]) -> bool:
    if value in ("", "*"):
        return True
    wanted = {item.strip() for item in re.split(r"[,\\]", value) if item.strip()}
    if keyword == "SOPInstanceUID":
        return header.sop_instance_uid in wanted
    if keyword == "SOPClassUID":
        return header.sop_class_uid in wanted
    return str(header.instance_number) in wanted  # InstanceNumber


def _instance_values(at: SeriesAt, header: InstanceHeader, base: str) -> dict[str, Any]:
    return {
        "SpecificCharacterSet": CHARACTER_SET,
        "SOPClassUID": header.sop_class_uid,
        "SOPInstanceUID": header.sop_instance_uid,
        "InstanceAvailability": "ONLINE",
        "RetrieveURL": f"{base}/studies/{at.study}/series/{at.series}/instances/{header.sop_instance_uid}",
        "InstanceNumber": header.instance_number,
        "Rows": header.rows,
        "Columns": header.columns,
        "NumberOfFrames": header.frames or None,
        "StudyInstanceUID": at.study,
        "SeriesInstanceUID": at.series,
        "Modality": at.modality,
        "AvailableTransferSyntaxUID": header.transfer_syntax,
    }


def _rebased(items: Iterable[bytes], base: str) -> Iterator[bytes]:
    stored, actual = BASE.encode(), base.encode()
    for item in items:
        yield item.replace(stored, actual)


def _array(items: Iterable[bytes]) -> Iterator[bytes]:
    """A JSON array of already encoded items, in pieces of about 64 KiB, or less where an empty
    item (:data:`PAUSE`) says the next is not at hand."""
    pending = [b"["]
    size = 1
    first = True
    for item in items:
        if item == PAUSE:
            if size:
                yield b"".join(pending)
                pending, size = [], 0
            continue
        if not first:
            pending.append(b",")
        first = False
        pending.append(item)
        size += len(item)
        if size >= 65536:
            yield b"".join(pending)
            pending, size = [], 0
    pending.append(b"]")
    yield b"".join(pending)
