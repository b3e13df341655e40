"""The media of DICOMweb answers: what an Accept header asks for, and a multipart/related body
(PS3.18 8.7) whose length is known before its first byte (every part's size is)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class NotAcceptable(ValueError):
    """The client asks only for representations this server cannot give (406)."""


def media_ranges(accept: str) -> list[tuple[str, dict[str, str]]]:
    """The Accept header's media ranges, each with its parameters (names lower-cased, values
    unquoted); ``*/*`` alone when the header is empty."""
    ranges = []
    for media_range in accept.split(","):
        name, *parameters = (item.strip() for item in media_range.split(";"))
        if not name:
            continue
        options = {}
        for parameter in parameters:
            key, equals, value = parameter.partition("=")
            if equals:
                options[key.strip().lower()] = value.strip().strip('"')
        ranges.append((name.lower(), options))
    return ranges or [("*/*", {})]


def multipart(
    kind: str, parts: list[tuple[str, int]], body_of: Callable[[int], Iterable[Any]]
) -> tuple[str, int, Iterator[Any]]:
    """A ``multipart/related; type=kind`` answer of ``parts`` (each its Content-Type and size;
    ``body_of(k)``: part k's bytes): its Content-Type, Content-Length and body."""
    boundary = secrets.token_hex(16)
    heads = [
        f"--{boundary}\r\nContent-Type: {part_type}\r\nContent-Length: {size}\r\n\r\n".encode()
        for part_type, size in parts
    ]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(head) + size + 2 for head, (_, size) in zip(heads, parts, strict=True)) + len(tail)

    def body() -> Iterator[Any]:
        for number, head in enumerate(heads):
            yield head
            yield from body_of(number)
            yield b"\r\n"
        yield tail

    return f'multipart/related; type="{kind}"; boundary={boundary}', length, body()


def bulk_as_one_part(accept: str) -> bool:
    """Whether bulk data goes as its bare bytes rather than as a ``multipart/related`` answer of
    one ``application/octet-stream`` part; the first media range that takes either decides.
    ``*/*`` (no Accept) is the bare bytes: what OHIF's single-part bulk data mode asks for by
    sending no Accept; a client that wants parts (dicomweb-client) says ``multipart/related``."""
    for name, options in media_ranges(accept):
        if name in ("multipart/related", "multipart/*"):
            if options.get("type", "application/octet-stream") in ("application/octet-stream", "*/*"):
                return False
        elif name in ("application/octet-stream", "application/*", "*/*"):
            return True
    raise NotAcceptable("bulk data is application/octet-stream, alone or as the part of a multipart/related answer")
