"""idcfs/dicom: an instance's header read once (attributes, metadata as DICOM JSON, where each frame
lies), in process over files made here with pydicom; and a series' record kept on disk."""

from __future__ import annotations

import io
import os
import threading
import time

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from idcfs.dicom.header import BASE, NotDicom, read_header
from idcfs.dicom.series_headers import PAUSE, SeriesHeaders


def _instance(syntax: str, frames: list[bytes] | bytes, count: int, has_bot: bool = True, fragments: int = 1) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = 7
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = count
    ds.ICCProfile = b"x" * 2000  # long and binary: a BulkDataURI in the metadata
    if isinstance(frames, bytes):
        ds.PixelData = frames
    else:
        ds.PixelData = encapsulate(frames, fragments_per_frame=fragments, has_bot=has_bot)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def _frames_of(raw: bytes, header) -> list[bytes]:
    cut = []
    for number in range(header.frames):
        parts = header.fragments.get(number) or [header.frame_offsets[number]]
        cut.append(b"".join(raw[offset : offset + size] for offset, size in parts))
    return cut


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_native_frames_are_where_the_pixel_data_says(syntax):
    pixels = bytes(range(48))  # three 4x4 frames of 8 bits
    raw = _instance(syntax, pixels, 3)
    header = read_header(io.BytesIO(raw), "a.dcm", len(raw), f"{BASE}/studies/1/series/2")
    assert header.frames == 3 and header.transfer_syntax == syntax and header.instance_number == 7
    assert _frames_of(raw, header) == [pixels[0:16], pixels[16:32], pixels[32:48]]


@pytest.mark.parametrize(("has_bot", "fragments"), [(True, 1), (False, 1), (True, 2)])
def test_encapsulated_frames_with_and_without_an_offset_table(has_bot, fragments):
    frames = [bytes([k]) * (100 + 2 * k) for k in range(5)]
    raw = _instance(JPEGBaseline8Bit, frames, len(frames), has_bot=has_bot, fragments=fragments)
    header = read_header(io.BytesIO(raw), "a.dcm", len(raw), f"{BASE}/studies/1/series/2")
    assert header.frames == 5
    expected = list(generate_frames(pydicom.dcmread(io.BytesIO(raw)).PixelData, number_of_frames=5))
    assert _frames_of(raw, header) == expected == frames


def test_the_metadata_is_dicom_json_with_large_values_as_bulk_data():
    raw = _instance(ExplicitVRLittleEndian, bytes(16), 1)
    header = read_header(io.BytesIO(raw), "a.dcm", len(raw), f"{BASE}/studies/1/series/2")
    meta = header.metadata
    assert meta["00080018"]["Value"] == [header.sop_instance_uid]
    instance = f"{BASE}/studies/1/series/2/instances/{header.sop_instance_uid}"
    assert meta["00282000"]["BulkDataURI"] == f"{instance}/bulk/00282000"
    assert meta["00020010"]["Value"] == [ExplicitVRLittleEndian]
    assert "7FE00010" not in meta  # the frames are asked for as frames


def test_what_is_not_dicom_is_said_so():
    with pytest.raises(NotDicom):
        read_header(io.BytesIO(b"not a dicom file at all" * 10), "x.dcm", 230, BASE)


def test_a_series_is_read_once_by_one_caller_and_then_from_disk(tmp_path):
    raws = {f"{k}.dcm": _instance(ExplicitVRLittleEndian, bytes([k]) * 16, 1) for k in range(12)}
    opened, open_object = _opener(raws)

    def objects():
        return [(name, len(raw)) for name, raw in raws.items()]

    headers = SeriesHeaders(tmp_path)
    results = []
    callers = [
        threading.Thread(target=lambda: results.append(headers.get("uuid-1", f"{BASE}/s", objects, open_object)))
        for _ in range(4)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert sorted(opened) == sorted(raws)  # each object once, whoever asked
    index = results[0]
    assert [h.name for h in index.instances] == list(raws)
    metadata = [pydicom.Dataset.from_json(item.decode(), lambda *_: b"") for item in index.metadata()]
    assert [m.SOPInstanceUID for m in metadata] == [h.sop_instance_uid for h in index.instances]
    again = SeriesHeaders(tmp_path).get("uuid-1", f"{BASE}/s", objects, lambda name: pytest.fail("read again"))
    assert [h.sop_instance_uid for h in again.instances] == [h.sop_instance_uid for h in index.instances]
    assert list(again.metadata([3])) == list(index.metadata([3]))


def test_a_failed_read_is_not_remembered(tmp_path):
    raw = _instance(ExplicitVRLittleEndian, bytes(16), 1)
    headers = SeriesHeaders(tmp_path)
    calls = {"n": 0}

    def open_object(name):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "the store cannot be reached")
        return io.BytesIO(raw)

    with pytest.raises(OSError):
        headers.get("u", BASE, lambda: [("a.dcm", len(raw))], open_object)
    assert len(headers.get("u", BASE, lambda: [("a.dcm", len(raw))], open_object)) == 1


def test_a_damaged_record_is_read_again(tmp_path):
    raw = _instance(ExplicitVRLittleEndian, bytes(16), 1)
    SeriesHeaders(tmp_path).get("ab-1", BASE, lambda: [("a.dcm", len(raw))], lambda name: io.BytesIO(raw))
    (record,) = (tmp_path / "ab").iterdir()
    record.write_bytes(record.read_bytes()[:-20])
    again = SeriesHeaders(tmp_path).get("ab-1", BASE, lambda: [("a.dcm", len(raw))], lambda name: io.BytesIO(raw))
    assert len(again) == 1


def _opener(raws: dict[str, bytes]):
    """Objects opened from ``raws``, and the names opened (from any thread), in order."""
    opened: list[str] = []
    lock = threading.Lock()

    def open_object(name):
        with lock:
            opened.append(name)
        return io.BytesIO(raws[name])

    return opened, open_object


def _series(count: int) -> dict[str, bytes]:
    return {f"{k:05}.dcm": _instance(ExplicitVRLittleEndian, bytes([k % 256]) * 16, 1) for k in range(count)}


def test_a_series_metadata_is_answered_as_its_headers_are_read(tmp_path):
    raws = _series(12)
    last = max(raws)
    first_seen = threading.Event()
    held: list[bool] = []

    def open_object(name):
        if name == last:  # the last header is read only once the first has reached the answer
            held.append(first_seen.wait(30))
        return io.BytesIO(raws[name])

    headers = SeriesHeaders(tmp_path)
    stream = headers.metadata("uuid-s", BASE, lambda: [(n, len(r)) for n, r in raws.items()], open_object)
    answered = [next(stream)]
    first_seen.set()
    answered += [item for item in stream if item != PAUSE]
    assert held == [True]
    index = headers.get("uuid-s", BASE, lambda: pytest.fail("listed again"), lambda name: pytest.fail("read again"))
    assert answered == list(index.metadata())
    uids = [pydicom.Dataset.from_json(item.decode(), lambda *_: b"").SOPInstanceUID for item in answered]
    assert uids == [h.sop_instance_uid for h in index.instances]


def test_an_answer_behind_the_lines_kept_takes_the_rest_from_the_record(tmp_path, monkeypatch):
    from idcfs.dicom import series_headers

    monkeypatch.setattr(series_headers, "FOLLOWED_BYTES", 20_000)  # a dozen lines
    raws = _series(60)
    headers = SeriesHeaders(tmp_path)
    stream = headers.metadata(
        "uuid-b", BASE, lambda: [(n, len(r)) for n, r in raws.items()], lambda n: io.BytesIO(raws[n])
    )
    answered = [next(stream)]
    index = headers.get("uuid-b", BASE, lambda: [], lambda name: pytest.fail("read again"))  # the read done
    answered += [item for item in stream if item != PAUSE]  # resumed past the lines kept in memory
    assert answered == list(index.metadata()) and len(answered) == len(raws)


def test_an_answer_fallen_behind_while_the_read_goes_on_gets_every_line_in_order(tmp_path, monkeypatch):
    from idcfs.dicom import series_headers

    monkeypatch.setattr(series_headers, "FOLLOWED_BYTES", 20_000)
    raws = {**_series(59), "zz-not-dicom.dcm": b"not DICOM at all"}  # (its line is skipped)
    raws["zzz-last.dcm"] = _instance(ExplicitVRLittleEndian, bytes(16), 1)
    first_taken, release = threading.Event(), threading.Event()

    def open_object(name):
        if name == "00001.dcm":  # the answer has its first line before it falls behind
            first_taken.wait(30)
        if name == "zzz-last.dcm":
            release.wait(30)
        return io.BytesIO(raws[name])

    headers = SeriesHeaders(tmp_path)
    stream = headers.metadata("uuid-r", BASE, lambda: [(n, len(r)) for n, r in raws.items()], open_object)
    answered = [next(stream)]
    first_taken.set()
    reading = headers._reading["uuid-r"]
    deadline = time.monotonic() + 30
    while reading.count < 59 and time.monotonic() < deadline:  # all read but the held one
        time.sleep(0.01)
    threading.Timer(0.3, release.set).start()  # while the answer waits, behind the lines kept
    answered += [item for item in stream if item != PAUSE]
    index = headers.get("uuid-r", BASE, lambda: [], lambda name: pytest.fail("read again"))
    assert answered == list(index.metadata()) and len(answered) == 60


def test_an_answer_joining_a_read_far_behind_the_lines_kept_gets_them_before_the_read_ends(tmp_path, monkeypatch):
    """A second viewer asking for a series while its read is far along (IDC's largest series
    take minutes): the lines memory no longer keeps come from the record being written, not
    after the last header."""
    from idcfs.dicom import series_headers

    monkeypatch.setattr(series_headers, "FOLLOWED_BYTES", 10_000)  # a dozen lines
    monkeypatch.setattr(series_headers, "READ_AT_ONCE", 10_000)  # several reads of the record
    raws = {**_series(59), "zz-not-dicom.dcm": b"not DICOM at all"}  # (no line of its own)
    raws["zzz-last.dcm"] = _instance(ExplicitVRLittleEndian, bytes(16), 1)
    release = threading.Event()

    def open_object(name):
        if name == "zzz-last.dcm":
            assert release.wait(30)
        return io.BytesIO(raws[name])

    headers = SeriesHeaders(tmp_path)
    first = headers.metadata("uuid-l", BASE, lambda: [(n, len(r)) for n, r in raws.items()], open_object)
    next(first)
    reading = headers._reading["uuid-l"]
    deadline = time.monotonic() + 30
    while reading.count < 59 and time.monotonic() < deadline:  # all read but the held one
        time.sleep(0.01)
    assert reading.count == 59 and len(reading.recent) < 30
    late = headers.metadata("uuid-l", BASE, lambda: pytest.fail("listed again"), lambda n: pytest.fail("read again"))
    before_the_end = []
    for item in late:
        if item == PAUSE:
            break  # it has every line read so far, and waits for the next
        before_the_end.append(item)
    assert len(before_the_end) == 59 and not reading.done.done()
    release.set()
    answered = before_the_end + [item for item in late if item != PAUSE]
    index = headers.get("uuid-l", BASE, lambda: [], lambda name: pytest.fail("read again"))
    assert answered == list(index.metadata()) and len(answered) == 60
    assert [item for item in first if item != PAUSE] == answered[1:]


def test_temporary_records_of_a_process_gone_and_older_formats_are_swept(tmp_path):
    from idcfs.dicom.series_headers import FORMAT, STALE_TEMPORARY

    (tmp_path / "ab").mkdir()
    stale = tmp_path / "ab" / f".ab-1.v{FORMAT}.headers.123.456"
    live = tmp_path / "ab" / f".ab-2.v{FORMAT}.headers.123.789"
    older_format = tmp_path / "ab" / f"ab-3.v{FORMAT - 1}.headers"  # never read again
    kept = tmp_path / "ab" / f"ab-4.v{FORMAT}.headers"
    for path in (stale, live, older_format, kept):
        path.write_bytes(b"{}\t{}\n")
    old = time.time() - STALE_TEMPORARY - 60
    for path in (stale, older_format, kept):
        os.utime(path, (old, old))
    SeriesHeaders(tmp_path)
    deadline = time.monotonic() + 10
    while (stale.exists() or older_format.exists()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not stale.exists() and not older_format.exists()
    assert live.exists() and kept.exists()


def test_a_client_gone_leaves_the_read_to_finish_and_be_kept(tmp_path):
    raws = _series(30)
    opened, open_object = _opener(raws)
    headers = SeriesHeaders(tmp_path)
    stream = headers.metadata("uuid-g", BASE, lambda: [(n, len(r)) for n, r in raws.items()], open_object)
    next(stream)
    stream.close()  # the client went away after the first instance
    index = headers.get("uuid-g", BASE, lambda: pytest.fail("listed again"), lambda name: pytest.fail("read again"))
    assert len(index) == len(raws) and sorted(opened) == sorted(raws)
    again = SeriesHeaders(tmp_path).get("uuid-g", BASE, lambda: [], lambda name: pytest.fail("read again"))
    assert len(again) == len(raws)  # kept on disk for good


def test_a_read_failing_midway_fails_its_answer_and_is_not_remembered(tmp_path):
    raws = _series(20)
    failing = {"on": True}

    def open_object(name):
        if name == "00015.dcm" and failing["on"]:
            raise OSError(5, "the store cannot be reached")
        return io.BytesIO(raws[name])

    headers = SeriesHeaders(tmp_path)
    listed = [(n, len(r)) for n, r in raws.items()]
    answered = []
    with pytest.raises(OSError, match="cannot be reached"):
        for item in headers.metadata("uuid-f", BASE, lambda: listed, open_object):
            answered += [item] if item != PAUSE else []
    assert 0 < len(answered) <= 15  # the lines read before it, never past the instance that failed
    assert not list(tmp_path.rglob("*.headers")) and not list(tmp_path.rglob(".*"))  # nothing half kept
    failing["on"] = False
    assert len([i for i in headers.metadata("uuid-f", BASE, lambda: listed, open_object) if i]) == len(raws)


def test_a_value_within_a_sequence_has_a_bulk_data_uri_of_its_own():
    from pydicom.sequence import Sequence

    from idcfs.dicom.header import value_at

    ds = pydicom.dcmread(io.BytesIO(_instance(ExplicitVRLittleEndian, bytes(16), 1)))
    profile = bytes(range(256)) * 8
    ds.OpticalPathSequence = Sequence([Dataset(), Dataset()])
    ds.OpticalPathSequence[1].ICCProfile = profile  # in the second item
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    raw = out.getvalue()
    header = read_header(io.BytesIO(raw), "a.dcm", len(raw), f"{BASE}/s")
    uri = header.metadata["00480105"]["Value"][1]["00282000"]["BulkDataURI"]
    assert uri.endswith("/bulk/00480105/1/00282000")
    assert header.metadata["00282000"]["BulkDataURI"].endswith("/bulk/00282000")  # a top-level one
    read = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    assert value_at(read, uri.split("/bulk/")[1].split("/")) == profile
    for wrong in (["00480105", "2", "00282000"], ["00480105", "x", "00282000"], ["00480105", "1"], ["zz"]):
        assert value_at(read, wrong) is None
    assert not isinstance(value_at(read, ["00480105"]), bytes)  # a sequence: no bulk data
