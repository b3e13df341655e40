"""WADO-RS retrievals of whole instances: a study's, a series' or one instance's objects as one
``multipart/related; type="application/dicom"`` answer, each part the stored bytes.

The sizes are exact from the series' listings before a byte is read, so the answer has a
Content-Length (no chunking) and each part's bytes go out as they come through the block cache
(the series read ahead by the prefetch a first read starts, as through any face).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from idcfs.dicomweb.media import NotAcceptable, media_ranges, multipart
from idcfs.vfs.body import FileBody
from idcfs.vfs.vfs import Vfs


@dataclass(frozen=True)
class Part:
    path: str  # in the tree
    size: int


def stored_dicom_accepted(accept: str, transfer_syntaxes: set[str]) -> str | None:
    """The transfer syntax to name on each part (None: name none), if ``accept`` takes the
    stored bytes; else NotAcceptable. The stored bytes are what this server has: a request for
    another transfer syntax than the series is stored in cannot be met (no transcoding)."""
    stored = next(iter(transfer_syntaxes)) if len(transfer_syntaxes) == 1 else None
    for kind, options in media_ranges(accept):
        if kind in ("*/*", "multipart/*", "multipart/related"):
            if options.get("type", "application/dicom") not in ("application/dicom", "*/*"):
                continue
            syntax = options.get("transfer-syntax", "*")
            if syntax == "*":
                return stored
            if transfer_syntaxes == {syntax}:
                return syntax
    raise NotAcceptable(
        'this server sends instances as stored (multipart/related; type="application/dicom"; '
        f"transfer-syntax=* or {' or '.join(sorted(transfer_syntaxes)) or 'as stored'}); it does not transcode"
    )


def instances(vfs: Vfs, parts: list[Part], syntax: str | None, views: bool) -> tuple[str, int, Iterator[Any]]:
    """The Content-Type, Content-Length and body of the answer holding ``parts``."""
    kind = "application/dicom" + (f"; transfer-syntax={syntax}" if syntax else "")

    def body_of(number: int) -> Iterator[Any]:
        part = parts[number]
        if part.size:
            yield from FileBody(vfs.open(part.path), 0, part.size, vfs.block_size, views)

    return multipart("application/dicom", [(kind, part.size) for part in parts], body_of)
