"""One built ``.nifti`` folder as one file: a header naming its files, then their bytes.

The disk cache keeps a pack as a single block (one row, one file: evicted whole, never a
volume without its sidecar), so its files are read as ranges of that block. The header is
JSON with sorted keys and the files follow in name order: the same build gives the same bytes.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"IDCVOL1\n"
_LENGTH = struct.Struct("<I")
#: What a pack's first read takes: the magic, the header's length and, mostly, the header.
HEAD_BYTES = 64 << 10
#: The one file of a folder whose series could not be converted.
ERROR_FILE = "conversion-error.txt"


class PackError(ValueError):
    """Not a pack (a damaged or foreign file)."""


@dataclass(frozen=True)
class PackedFile:
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class Pack:
    """What a pack holds: its files, by name, in name order."""

    files: tuple[PackedFile, ...]
    #: The series could not be converted: the only file says why.
    failed: bool

    def get(self, name: str) -> PackedFile | None:
        return next((f for f in self.files if f.name == name), None)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def write_pack(path: Path, files: dict[str, Path], failed: bool = False) -> Pack:
    """Write the files (name -> where its bytes are) as a pack at ``path``."""
    names = sorted(files)
    sizes = [files[name].stat().st_size for name in names]
    # The header's length depends on the offsets, which depend on the header's length: settle it.
    start = 0
    while True:
        offsets, at = [], start
        for size in sizes:
            offsets.append(at)
            at += size
        header = _header(names, offsets, sizes, failed)
        if len(MAGIC) + _LENGTH.size + len(header) == start:
            break
        start = len(MAGIC) + _LENGTH.size + len(header)
    with open(path, "wb") as out:
        out.write(MAGIC + _LENGTH.pack(len(header)) + header)
        for name in names:
            with open(files[name], "rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
    return Pack(tuple(PackedFile(n, o, s) for n, o, s in zip(names, offsets, sizes, strict=True)), failed)


def _header(names: list[str], offsets: list[int], sizes: list[int], failed: bool) -> bytes:
    files = [[n, o, s] for n, o, s in zip(names, offsets, sizes, strict=True)]
    return json.dumps({"failed": failed, "files": files}, sort_keys=True, separators=(",", ":")).encode()


def header_length(head: bytes) -> int:
    """The bytes of the pack's start that hold its whole header (from its first bytes)."""
    if head[: len(MAGIC)] != MAGIC or len(head) < len(MAGIC) + _LENGTH.size:
        raise PackError("not a volume pack")
    return len(MAGIC) + _LENGTH.size + _LENGTH.unpack_from(head, len(MAGIC))[0]


def read_header(head: bytes) -> Pack:
    """The pack whose first bytes (at least :func:`header_length` of them) are ``head``."""
    end = header_length(head)
    if len(head) < end:
        raise PackError("a volume pack's header is cut short")
    try:
        header = json.loads(head[len(MAGIC) + _LENGTH.size : end])
        files = tuple(PackedFile(str(n), int(o), int(s)) for n, o, s in header["files"])
        return Pack(files, bool(header["failed"]))
    except (ValueError, KeyError, TypeError) as error:
        raise PackError(f"a volume pack's header is damaged: {error}") from None
