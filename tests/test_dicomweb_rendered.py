"""Rendering in process: each compressed syntax decoded the way it was encoded, the windows of
PS3.3, MONOCHROME1 shown inverted, and a syntax not decoded here refused."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless, generate_uid

from idcfs.dicomweb.media import NotAcceptable
from idcfs.dicomweb.query import QueryError
from idcfs.dicomweb.rendered import RenderOptions, parse_render_query, render, rendered_type


def _image(pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def _header_and_frame(ds: Dataset) -> tuple[Dataset, Callable[[], list[bytes]], str]:
    """What the server has: the header without its pixel data, and how to read the stored
    frame's bytes."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    stored = pydicom.dcmread(io.BytesIO(out.getvalue()))
    syntax = str(stored.file_meta.TransferSyntaxUID)
    if stored.file_meta.TransferSyntaxUID.is_encapsulated:
        frame = next(generate_frames(stored.PixelData, number_of_frames=1))
    else:
        frame = stored.PixelData
    header = pydicom.dcmread(io.BytesIO(out.getvalue()), stop_before_pixels=True)
    return header, lambda: [frame], syntax


def _shown(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)))


PIXELS = (np.arange(64 * 48).reshape(48, 64) % 4096).astype(np.uint16)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless])
def test_a_frame_is_decoded_windowed_and_shown(syntax):
    ds = _image(PIXELS)
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    header, frame, stored_syntax = _header_and_frame(ds)
    assert stored_syntax == syntax
    shown = _shown(render(header, frame, stored_syntax, "image/png", RenderOptions(window=(2048, 4096))))
    expected = np.rint(np.clip(((PIXELS - 2047.5) / 4095 + 0.5) * 255, 0, 255)).astype(np.uint8)
    assert np.array_equal(shown, expected)


def test_without_a_window_the_frames_range_is_shown_and_monochrome1_inverted():
    header, frame, syntax = _header_and_frame(_image(PIXELS[:, :16] + 100, "MONOCHROME1"))
    shown = _shown(render(header, frame, syntax, "image/png", RenderOptions()))
    assert shown.max() == 255 and shown.min() == 0
    assert shown[0, 0] == 255  # the lowest value, shown white


def test_the_instances_own_window_is_used_when_none_is_asked():
    ds = _image(PIXELS)
    ds.WindowCenter, ds.WindowWidth = [1000, 40], [200, 400]
    header, frame, syntax = _header_and_frame(ds)
    shown = _shown(render(header, frame, syntax, "image/png", RenderOptions()))
    expected = np.rint(np.clip(((PIXELS - 999.5) / 199 + 0.5) * 255, 0, 255)).astype(np.uint8)
    assert np.array_equal(shown, expected)


def test_what_is_not_rendered_here_is_refused():
    ds = _image(PIXELS)
    header, frame, _ = _header_and_frame(ds)
    with pytest.raises(NotAcceptable, match="cannot be decoded"):
        render(header, lambda: [b"\xff\xd8 not a frame"], "1.2.840.10008.1.2.4.70", "image/png", RenderOptions())
    with pytest.raises(NotAcceptable):
        rendered_type("image/gif, application/dicom")
    assert rendered_type("") == "image/jpeg" and rendered_type("image/*") == "image/jpeg"
    assert rendered_type("image/jpeg;q=0.5, image/png") == "image/png"
    assert rendered_type("image/jpeg;q=0, image/*") == "image/png"
    bad = ("quality=101", "window=1", "window=1,2,sigmoid", "window=nan,400", "window=40,inf", "viewport=1,2,3,4")
    for query in bad:
        with pytest.raises(QueryError):
            parse_render_query(query)
    assert parse_render_query("window=40,400,linear&viewport=128,96&quality=75") == RenderOptions(
        75, (40, 400), (128, 96)
    )


def test_signed_pixels_go_through_their_rescale_and_a_width_of_one_thresholds():
    signed = np.array([[-2000, -1000, 0, 1000]], dtype=np.int16)
    ds = _image(signed.astype(np.uint16))
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
    ds.PixelData = signed.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 2, 1  # values -3999, -1999, 1, 2001
    header, frame, syntax = _header_and_frame(ds)
    shown = _shown(render(header, frame, syntax, "image/png", RenderOptions(window=(1.5, 1))))
    assert shown.tolist() == [[0, 0, 0, 255]]  # x <= c - 0.5 is black (PS3.3 C.11.2.1.2.1)
    shown = _shown(render(header, frame, syntax, "image/png", RenderOptions(window=(1, 8002))))
    assert shown.tolist() == [[0, 64, 128, 191]]


def test_a_palette_or_an_oversized_frame_is_refused_before_its_bytes_are_read(monkeypatch):
    from idcfs.dicomweb import rendered

    def unread() -> list[bytes]:
        raise AssertionError("the frame was read")

    header, _, syntax = _header_and_frame(_image(PIXELS, "PALETTE COLOR"))
    with pytest.raises(NotAcceptable, match="PALETTE COLOR"):
        render(header, unread, syntax, "image/png", RenderOptions())
    monkeypatch.setattr(rendered, "MAX_PIXELS", 1000)
    header, _, syntax = _header_and_frame(_image(PIXELS))
    with pytest.raises(NotAcceptable, match="larger"):
        render(header, unread, syntax, "image/png", RenderOptions())


def test_renderings_beyond_those_at_once_wait_then_are_told_busy(monkeypatch):
    from idcfs.dicomweb import rendered

    monkeypatch.setattr(rendered, "TURN_TIMEOUT", 0.2)
    header, frame, syntax = _header_and_frame(_image(PIXELS))
    started, release = threading.Barrier(rendered.RENDERS_AT_ONCE + 1), threading.Event()

    def held() -> list[bytes]:
        started.wait(10)
        assert release.wait(10)
        return frame()

    threads = [
        threading.Thread(target=render, args=(header, held, syntax, "image/png", RenderOptions()))
        for _ in range(rendered.RENDERS_AT_ONCE)
    ]
    for thread in threads:
        thread.start()
    started.wait(10)  # every turn taken
    with pytest.raises(rendered.Busy):
        render(header, frame, syntax, "image/png", RenderOptions())
    release.set()
    for thread in threads:
        thread.join(10)
    assert _shown(render(header, frame, syntax, "image/png", RenderOptions())).shape == PIXELS.shape
