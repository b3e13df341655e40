"""The little of NIfTI-1 a label map needs, and gzip with the same bytes on every machine.

A label map takes its image volume's header whole and changes only what describes the voxels
(dimensions, data type, scaling, intent): its geometry fields (qform, sform, their codes,
pixdim) are the image's own bytes, so every reader (nibabel, ITK, FSL) derives exactly the
image's affine from it, whichever of qform and sform it prefers.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

#: The header and the four bytes of "no extensions" before the voxels (``vox_offset``).
HEADER_BYTES = 352
#: Every .nii.gz made by idcfs: zlib's level 1. Level 6 (gzip's and dcm2niix's default) took
#: ten times as long on a noisy 100 MB CT volume for a file 5% smaller.
GZIP_LEVEL = 1
#: Blocks deflated apart (in parallel); part of what fixes the bytes, like the level.
GZIP_BLOCK = 4 << 20
#: A gzip header: deflate, no flags, time 0, no extra flags, OS unknown (255).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_WORKERS = min(8, os.cpu_count() or 1)

_DATATYPES = {np.dtype(np.uint8): 2, np.dtype(np.int16): 4, np.dtype(np.uint16): 512}
_INTENT_LABEL = 1002


class NiftiError(ValueError):
    """Not a NIfTI-1 header idcfs can read."""


def _order(header: bytes) -> Literal["<", ">"]:
    for order in ("<", ">"):
        if struct.unpack_from(order + "i", header, 0)[0] == 348:
            return order
    raise NiftiError("not a NIfTI-1 header")


def grid(header: bytes) -> tuple[tuple[int, int, int], np.ndarray]:
    """The spatial shape and the voxel-to-RAS affine (sform when set, else qform) of a header."""
    order = _order(header)
    dim = struct.unpack_from(order + "8h", header, 40)
    if dim[0] < 3:
        raise NiftiError(f"a {dim[0]}-D image has no volume grid")
    shape = (int(dim[1]), int(dim[2]), int(dim[3]))
    qform_code, sform_code = struct.unpack_from(order + "2h", header, 252)
    if sform_code > 0:
        rows = struct.unpack_from(order + "12f", header, 280)
        affine = np.vstack([np.array(rows, dtype=np.float64).reshape(3, 4), [0, 0, 0, 1]])
        return shape, affine
    if qform_code <= 0:
        raise NiftiError("the image has neither sform nor qform")
    pixdim = struct.unpack_from(order + "8f", header, 76)
    b, c, d, x, y, z = struct.unpack_from(order + "6f", header, 256)
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    zooms = np.array([pixdim[1], pixdim[2], pixdim[3] * qfac])
    affine = np.eye(4)
    affine[:3, :3] = rotation * zooms
    affine[:3, 3] = (x, y, z)
    return shape, affine


def write_like(path: Path, image_header: bytes, voxels: np.ndarray, description: str) -> None:
    """Write ``voxels`` (x, y, z[, t], in the image's voxel order) as a NIfTI-1 file whose
    geometry is ``image_header``'s, uncompressed."""
    order = _order(image_header)
    dtype = np.dtype(voxels.dtype).newbyteorder(order)
    if np.dtype(voxels.dtype) not in _DATATYPES:
        raise NiftiError(f"no NIfTI data type for {voxels.dtype}")
    header = bytearray(image_header[:348])
    dim = [voxels.ndim, *voxels.shape] + [1] * (7 - voxels.ndim)
    struct.pack_into(order + "8h", header, 40, *dim)
    struct.pack_into(order + "3f", header, 56, 0.0, 0.0, 0.0)  # intent parameters
    struct.pack_into(order + "h", header, 68, _INTENT_LABEL)
    struct.pack_into(order + "2h", header, 70, _DATATYPES[np.dtype(voxels.dtype)], voxels.dtype.itemsize * 8)
    pixdim = list(struct.unpack_from(order + "8f", header, 76))
    pixdim[4:] = [1.0 if voxels.ndim > 3 else 0.0, 0.0, 0.0, 0.0]
    struct.pack_into(order + "8f", header, 76, *pixdim)
    struct.pack_into(order + "h", header, 74, 0)  # slice_start: no acquisition timing in a label map
    struct.pack_into(order + "hBB", header, 120, 0, 0, header[123])  # slice_end, slice_code
    struct.pack_into(order + "2f", header, 132, 0.0, 0.0)  # slice_duration, toffset
    struct.pack_into(order + "f", header, 108, float(HEADER_BYTES))  # vox_offset
    struct.pack_into(order + "2f", header, 112, 1.0, 0.0)  # scl_slope, scl_inter
    top = float(voxels.max()) if voxels.size else 0.0
    struct.pack_into(order + "2f", header, 124, top, 0.0)  # cal_max, cal_min
    header[148:228] = description.encode()[:79].ljust(80, b"\0")  # descrip
    header[228:252] = b"\0" * 24  # aux_file
    header[328:344] = b"labels".ljust(16, b"\0")  # intent_name
    with open(path, "wb") as out:
        out.write(bytes(header) + b"\0\0\0\0")
        out.write(np.asarray(voxels, dtype=dtype).tobytes(order="F"))


def gzip_file(source: Path, target: Path) -> None:
    """``source`` gzipped into ``target`` with nothing of the moment or the machine in it (no
    name, time 0), in parallel: blocks of :data:`GZIP_BLOCK` bytes deflated apart on every core
    and joined into one gzip member, as pigz does (each block ends byte-aligned with a sync
    flush). The same input gives the same bytes however many cores there are."""
    crc, length = 0, 0
    with open(source, "rb") as data, open(target, "wb") as out, ThreadPoolExecutor(_WORKERS) as pool:
        out.write(_GZIP_HEADER)
        pending: deque[Future[bytes]] = deque()
        block = data.read(GZIP_BLOCK)
        while True:
            after = data.read(GZIP_BLOCK)  # one ahead: the last block is the one that finishes
            crc, length = zlib.crc32(block, crc), length + len(block)
            pending.append(pool.submit(_deflate, block, not after))
            while len(pending) > _WORKERS * 2 or (pending and not after):
                out.write(pending.popleft().result())
            if not after:
                break
            block = after
        out.write(struct.pack("<II", crc, length & 0xFFFFFFFF))


def _deflate(block: bytes, last: bool) -> bytes:
    deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflate.compress(block) + deflate.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
