"""WADO-RS retrievals of whole instances: a study's or a series' objects as one
``multipart/related; type="application/dicom"`` answer, each part the stored bytes.

The sizes are exact from the series' listings before a byte is read, so the answer has a
Content-Length (no chunking) and each part's bytes go out as they come through the block cache
(the series read ahead by the prefetch a first read starts, as through any face).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from idcfs.vfs.body import FileBody
from idcfs.vfs.vfs import Vfs


class NotAcceptable(ValueError):
    """The client asks only for representations this server cannot give (406)."""


@dataclass(frozen=True)
class Part:
    path: str  # in the tree
    size: int
    transfer_syntax: str | None  # when the index names one for the series


def stored_dicom_accepted(accept: str, transfer_syntaxes: set[str]) -> str | None:
    """The transfer syntax to name on each part (None: name none), if ``accept`` takes the
    stored bytes; else NotAcceptable. The stored bytes are what this server has: a request for
    another transfer syntax than the series is stored in cannot be met (no transcoding)."""
    stored = next(iter(transfer_syntaxes)) if len(transfer_syntaxes) == 1 else None
    if not accept.strip():
        return stored
    for media_range in accept.split(","):
        kind, *parameters = (item.strip() for item in media_range.split(";"))
        options = dict(_parameter(p) for p in parameters if "=" in p)
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


def _parameter(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name.strip().lower(), value.strip().strip('"')


def multipart(vfs: Vfs, parts: list[Part], views: bool) -> tuple[str, int, Iterator[Any]]:
    """The Content-Type, Content-Length and body of the answer holding ``parts``."""
    boundary = secrets.token_hex(16)
    heads = [
        (
            f"--{boundary}\r\nContent-Type: application/dicom"
            + (f"; transfer-syntax={part.transfer_syntax}" if part.transfer_syntax else "")
            + f"\r\nContent-Length: {part.size}\r\n\r\n"
        ).encode()
        for part in parts
    ]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(head) + part.size + 2 for head, part in zip(heads, parts, strict=True)) + len(tail)
    kind = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return kind, length, _body(vfs, parts, heads, tail, views)


def _body(vfs: Vfs, parts: list[Part], heads: list[bytes], tail: bytes, views: bool) -> Iterator[Any]:
    for head, part in zip(heads, parts, strict=True):
        yield head
        if part.size:
            yield from FileBody(vfs.open(part.path), 0, part.size, vfs.block_size, views)
        yield b"\r\n"
    yield tail
