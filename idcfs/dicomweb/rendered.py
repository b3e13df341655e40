"""Rendered images (WADO-RS ``/rendered``): one frame decoded, its modality LUT and a window
applied, as JPEG or PNG, for a client that shows an image without decoding DICOM (a thumbnail,
a web page, a report).

Decoding is pydicom's, with the plugins highdicom already brings (Pillow: JPEG baseline and
extended, JPEG 2000; pyjpegls: JPEG-LS; RLE and native in numpy). A transfer syntax none of them
decodes is a 406 that says so, never a wrong image. The window is the request's ``window``, else
the instance's first WindowCenter/WindowWidth, else the frame's own range; MONOCHROME1 is shown
inverted, as it is meant to be seen. Color frames are shown as decoded (RGB); a palette is not
applied (406).
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from idcfs.dicomweb.media import NotAcceptable, media_ranges
from idcfs.dicomweb.query import QueryError

#: The media types made here, and Pillow's names for them; the first is the default.
MEDIA = {"image/jpeg": "JPEG", "image/png": "PNG"}
#: Pixels of one frame rendered at most (a frame is decoded whole in memory: a mammogram's
#: 30 million pass).
MAX_PIXELS = 40_000_000
#: Frames rendered at once (each up to about 10 bytes a pixel while it is made, its stored
#: bytes included); the others wait.
RENDERS_AT_ONCE = 2
#: Seconds a rendering waits for its turn before the answer is 503 (a server thread is held
#: meanwhile).
TURN_TIMEOUT = 10.0

_turns = threading.BoundedSemaphore(RENDERS_AT_ONCE)
_GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


class Busy(TimeoutError):
    """Every rendering turn stayed taken (503: try again)."""


#: JPEG quality when the request names none.
DEFAULT_QUALITY = 90


@dataclass(frozen=True)
class RenderOptions:
    quality: int = DEFAULT_QUALITY
    window: tuple[float, float] | None = None  # center, width (linear)
    viewport: tuple[int, int] | None = None  # the largest width and height shown


def rendered_type(accept: str) -> str:
    """The media type an Accept header asks for among :data:`MEDIA`, by preference (``q``);
    for any image, the first of them not refused (``q=0``)."""
    preferred, refused = [], set()
    for order, (name, options) in enumerate(media_ranges(accept)):
        try:
            weight = float(options.get("q", "1"))
        except ValueError:
            weight = 0.0
        if weight > 0:
            preferred.append((-weight, order, name))
        else:
            refused.add(name)
    for _, _, name in sorted(preferred):
        if name in MEDIA:
            return name
        if name in ("*/*", "image/*"):
            for kind in MEDIA:
                if kind not in refused:
                    return kind
    raise NotAcceptable(f"rendered images are made as {' or '.join(MEDIA)}")


def parse_render_query(query: str) -> RenderOptions:
    """``quality``, ``window`` (center,width[,linear]) and ``viewport`` (vw,vh) of PS3.18's
    rendered resources; another function or a source region is refused, not ignored."""
    values = parse_qs(query, keep_blank_values=True)
    try:
        quality = int(values["quality"][-1]) if "quality" in values else DEFAULT_QUALITY
        window = None
        if "window" in values:
            center, width, *function = values["window"][-1].split(",")
            if function and function != ["linear"]:
                raise QueryError(f"window function {function[0]!r}: only linear is made here")
            window = float(center), float(width)
        viewport = None
        if "viewport" in values:
            sizes = values["viewport"][-1].split(",")
            if len(sizes) != 2:
                raise QueryError("viewport is vw,vh here (no source region)")
            viewport = int(sizes[0]), int(sizes[1])
    except (ValueError, IndexError):
        raise QueryError("quality is 1-100, window is center,width[,linear], viewport is vw,vh") from None
    if window and not all(math.isfinite(value) for value in window):
        raise QueryError("a window's center and width are numbers")
    if not 1 <= quality <= 100 or (window and window[1] < 1) or (viewport and min(viewport) < 1):
        raise QueryError("quality is 1-100, a window's width at least 1, a viewport's sides at least 1")
    return RenderOptions(quality, window, viewport)


def render(dataset: Any, frame: Callable[[], list[bytes]], syntax: str, media: str, options: RenderOptions) -> bytes:
    """The frame (``frame()``: its stored bytes, raw or an encapsulated frame's fragments, read
    once it is this rendering's turn) of the instance whose header is ``dataset`` (read without
    its pixel data), as ``media``."""
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    samples = int(dataset.get("SamplesPerPixel", 1))
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    if not rows or not columns or not (samples == 3 or (samples == 1 and photometric in _GRAYSCALE)):
        raise NotAcceptable(f"{photometric or 'this'} images are not rendered here (grayscale and color are)")
    if rows * columns * samples > MAX_PIXELS:
        raise NotAcceptable(f"a frame of {columns}x{rows} is larger than is rendered here")
    for extended in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if extended in dataset:
            del dataset[extended]
    if not _turns.acquire(timeout=TURN_TIMEOUT):
        raise Busy(f"no rendering could start within {TURN_TIMEOUT:g}s: the server is busy rendering")
    try:
        return _render(dataset, frame(), syntax, media, options, samples)
    finally:
        _turns.release()


def _render(
    dataset: Any, fragments: list[bytes], syntax: str, media: str, options: RenderOptions, samples: int
) -> bytes:
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    uid = UID(syntax)
    dataset.file_meta.TransferSyntaxUID = uid
    dataset.NumberOfFrames = 1
    dataset.PixelData = encapsulate([b"".join(fragments)]) if uid.is_encapsulated else b"".join(fragments)
    dataset["PixelData"].VR = "OB" if uid.is_encapsulated or int(dataset.get("BitsAllocated", 8)) <= 8 else "OW"
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # noqa: BLE001 - no plugin decodes it, or the frame is not what it says
        raise NotAcceptable(f"this frame ({uid.name or syntax}) cannot be decoded here: {error}") from None
    image = Image.fromarray(_shown(dataset, pixels, options.window), "RGB" if samples == 3 else "L")
    if options.viewport:
        image.thumbnail(options.viewport)
    out = io.BytesIO()
    image.save(out, MEDIA[media], **({"quality": options.quality} if media == "image/jpeg" else {}))
    return out.getvalue()


def _shown(dataset: Any, pixels: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """The frame as 8-bit values to show: a color frame scaled to 8 bits; a grayscale one
    through its modality LUT (rescale) and a linear window (PS3.3 C.11.2.1.2.1)."""
    if pixels.ndim == 3:  # color, as decoded (RGB)
        bits = int(dataset.get("BitsStored", 8))
        if bits <= 8:
            return np.ascontiguousarray(pixels.astype(np.uint8))
        scaled = pixels.astype(np.float32)
        scaled *= 255 / (2**bits - 1)
        return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
    values = pixels.astype(np.float32)  # (in place from here: one frame-sized array at a time)
    values *= float(dataset.get("RescaleSlope", 1) or 1)
    values += float(dataset.get("RescaleIntercept", 0) or 0)
    if window is None:
        window = _window_of(dataset)
    if window is None:
        low, high = float(values.min()), float(values.max())
        center, width = (low + high) / 2 + 0.5, max(1.0, high - low + 1)
    else:
        center, width = window
    if width <= 1:
        values = np.where(values <= center - 0.5, np.float32(0), np.float32(255))
    else:
        values -= center - 0.5
        values *= 255 / (width - 1)
        values += 127.5
    np.clip(values, 0, 255, out=values)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        np.subtract(255, values, out=values)
    return np.rint(values, out=values).astype(np.uint8)


def _window_of(dataset: Any) -> tuple[float, float] | None:
    """The instance's first window (its values may be one number or several)."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        first_center = float(center[0] if _many(center) else center)
        first_width = float(width[0] if _many(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (first_center, first_width) if first_width >= 1 else None


def _many(value: Any) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and len(value) > 0
