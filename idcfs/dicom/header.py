"""One instance's header, read once: the attributes DICOMweb answers with, its metadata as DICOM
JSON, and where each frame's bytes lie in the object.

pydicom reads the header up to the pixel data and stops there; the pixel data element's own
header says whether the frames are native (one after another, each the same size) or
encapsulated (items, one or more per frame). For encapsulated frames the Basic Offset Table
gives their places when it is filled, the Extended Offset Table when present; otherwise the items'
headers are walked once (IDC's slides often have no table) — a read of 8 bytes per item.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset

#: Values longer than this go to the metadata as a BulkDataURI, not inline (PS3.18 F.2.6).
BULK_THRESHOLD = 1024
#: What a stored BulkDataURI starts with: the service's base URL, put in at answer time (the
#: same server is reached under different names).
BASE = "idcfs-base:"

_ITEM = 0xE000FFFE  # (FFFE,E000) read as a little-endian 32-bit tag
_SEQUENCE_END = 0xE0DDFFFE
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"}


#: What pydicom, or the values it read, raise of an object that is no DICOM we can answer from:
#: also a header pydicom reads whose values make no sense (a frame count that is no number, an
#: offset table cut short). A store's failure is an OSError: not among them.
_UNREADABLE = (pydicom.errors.InvalidDicomError, EOFError, ValueError, KeyError, TypeError, IndexError, struct.error)


class NotDicom(ValueError):
    """The object is not a DICOM file pydicom can read the header of."""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What a retrieval or search needs of one instance (JSON-able: kept on disk)."""

    name: str  # the object's file name in its series folder
    size: int
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    frames: int  # 0 when it has no pixel data
    transfer_syntax: str
    #: (offset, length) of each frame in the object: a native frame, or an encapsulated frame's
    #: fragments (one run of items' values when it has several: see ``fragments``).
    frame_offsets: list[tuple[int, int]]
    #: For an encapsulated frame of several fragments: its fragments' (offset, length), in order.
    fragments: dict[int, list[tuple[int, int]]]
    metadata: dict[str, Any]


def read_header(stream: BinaryIO, name: str, size: int, series_url: str) -> InstanceHeader:
    """The header of the object ``stream`` (``size`` bytes); ``series_url`` (from :data:`BASE`)
    is where its series is asked for: its bulk data is asked for under it."""
    try:
        dataset = pydicom.dcmread(stream, stop_before_pixels=True)
        return _header(dataset, stream, name, size, series_url)
    except _UNREADABLE as error:
        raise NotDicom(f"{name}: {error or type(error).__name__}") from None


def _header(dataset: Dataset, stream: BinaryIO, name: str, size: int, series_url: str) -> InstanceHeader:
    syntax = str(dataset.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    pixel_at = stream.tell()
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    offsets: list[tuple[int, int]] = []
    fragments: dict[int, list[tuple[int, int]]] = {}
    if pixel_at < size:
        offsets, fragments = _frames(stream, pixel_at, size, dataset, frames, syntax)
    if not offsets:
        frames = 0
    metadata = _metadata(dataset, f"{series_url}/instances/{dataset.get('SOPInstanceUID', '')}")
    return InstanceHeader(
        name=name,
        size=size,
        sop_instance_uid=str(dataset.get("SOPInstanceUID", "")),
        sop_class_uid=str(dataset.get("SOPClassUID", "")),
        instance_number=_integer(dataset.get("InstanceNumber")),
        rows=_integer(dataset.get("Rows")),
        columns=_integer(dataset.get("Columns")),
        frames=frames,
        transfer_syntax=syntax,
        frame_offsets=offsets,
        fragments=fragments,
        metadata=metadata,
    )


def _integer(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _metadata(dataset: Dataset, instance_url: str) -> dict[str, Any]:
    places = _places(dataset)

    def bulk(element: Any) -> str:
        return f"{instance_url}/bulk/{places[id(element)]}"

    found: dict[str, Any] = dataset.to_json_dict(BULK_THRESHOLD, bulk)  # the file meta group left out
    # ... but for its transfer syntax, which viewers read to know how frames come
    syntax = str(dataset.file_meta.get("TransferSyntaxUID", ""))
    return {"00020010": {"vr": "UI", "Value": [syntax]}, **found} if syntax else found


def _places(dataset: Dataset, within: str = "") -> dict[int, str]:
    """Where each element of ``dataset`` is, by the element's identity: its tag, under its
    sequence's tag and item number when it is in one (``00480105/0/00282000``: an optical path's
    ICC profile). A value's BulkDataURI says where: pydicom hands its handler the element only."""
    places: dict[int, str] = {}
    for element in dataset:  # (elements read as they are iterated: the same objects after)
        place = f"{within}{int(element.tag):08X}"
        if element.VR == "SQ":
            for number, item in enumerate(element.value):
                places.update(_places(item, f"{place}/{number}/"))
        else:
            places[id(element)] = place
    return places


def value_at(dataset: Dataset, place: list[str]) -> Any:
    """The value of the element at ``place`` (as :func:`_places` writes it, split at ``/``), or
    None when there is none."""
    try:
        for step in range(0, len(place) - 1, 2):
            dataset = dataset[int(place[step], 16)].value[int(place[step + 1])]
        element = dataset.get(int(place[-1], 16)) if len(place) % 2 else None
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):
        return None
    return None if element is None else element.value


def _frames(
    stream: BinaryIO, at: int, size: int, dataset: Dataset, frames: int, syntax: str
) -> tuple[list[tuple[int, int]], dict[int, list[tuple[int, int]]]]:
    implicit = syntax == "1.2.840.10008.1.2"
    head = _read(stream, at, 12)
    if head[:4] != b"\xe0\x7f\x10\x00":  # (7FE0,0010), little-endian
        return [], {}
    if implicit:
        length = struct.unpack_from("<I", head, 4)[0]
        value_at = at + 8
    elif head[4:6] in _LONG_VRS:
        length = struct.unpack_from("<I", head, 8)[0]
        value_at = at + 12
    else:
        length = struct.unpack_from("<H", head, 6)[0]
        value_at = at + 8
    if length != 0xFFFFFFFF:  # native: frames one after another
        if frames <= 0 or length == 0:
            return [], {}
        frame_size = length // frames
        return [(value_at + k * frame_size, frame_size) for k in range(frames)], {}
    return _encapsulated(stream, value_at, size, dataset, frames)


def _encapsulated(
    stream: BinaryIO, at: int, size: int, dataset: Dataset, frames: int
) -> tuple[list[tuple[int, int]], dict[int, list[tuple[int, int]]]]:
    tag, table_length = struct.unpack("<II", _read(stream, at, 8))
    if tag != _ITEM:
        return [], {}
    table = _read(stream, at + 8, table_length) if table_length else b""
    first_item = at + 8 + table_length
    items = _items(stream, first_item, size)
    if not items:
        return [], {}
    starts: list[int]
    if "ExtendedOffsetTable" in dataset:
        relative = struct.unpack(f"<{len(dataset.ExtendedOffsetTable) // 8}Q", dataset.ExtendedOffsetTable)
        starts = [first_item + int(r) for r in relative]
    elif table:
        starts = [first_item + r for r in struct.unpack(f"<{len(table) // 4}I", table)]
    elif len(items) == frames:
        starts = [item_at for item_at, _ in items]
    elif frames == 1:
        starts = [first_item]
    else:
        return [], {}  # several fragments per frame and no table: which belong together is unknown
    by_start = {item_at: k for k, (item_at, _) in enumerate(items)}
    offsets: list[tuple[int, int]] = []
    fragments: dict[int, list[tuple[int, int]]] = {}
    for frame, start in enumerate(starts):
        first = by_start.get(start)
        if first is None:
            return [], {}
        last = by_start.get(starts[frame + 1], len(items)) if frame + 1 < len(starts) else len(items)
        parts = [(item_at + 8, length) for item_at, length in items[first:last]]
        offsets.append(parts[0] if len(parts) == 1 else (parts[0][0], sum(length for _, length in parts)))
        if len(parts) > 1:
            fragments[frame] = parts
    return offsets, fragments


def _items(stream: BinaryIO, at: int, size: int) -> list[tuple[int, int]]:
    """Every item's (offset of its header, length of its value) up to the sequence's end."""
    items = []
    while at + 8 <= size:
        tag, length = struct.unpack("<II", _read(stream, at, 8))
        if tag == _SEQUENCE_END:
            break
        if tag != _ITEM or length == 0xFFFFFFFF:
            return []
        items.append((at, length))
        at += 8 + length
    return items


def _read(stream: BinaryIO, at: int, count: int) -> bytes:
    stream.seek(at)
    data = stream.read(count)
    if len(data) != count:
        raise NotDicom(f"the object ends at {at + len(data)}, inside its pixel data")
    return data
