"""GET and HEAD of a file, answered without wsgidav's per-request work, the body sent from the
cached blocks as they are.

Most of what the share answers is a plain GET of a file: a viewer, Finder, a script reading a
series. wsgidav's path for it (conditions evaluated, its Range parser, a file object read a chunk
at a time, each chunk copied into a new ``bytes``) cost the share more than the bytes did. The
files of the tree never change, so a request without conditions has one answer: this middleware
gives it, with wsgidav's headers, and hands the server views of the cached blocks (no copy), when
the server says it takes them (:data:`VIEWS`: idcfs's own server does; any other WSGI server gets
``bytes``, as PEP 3333 asks). Everything else (a condition, more than one range, a range that
cannot be satisfied, a body, a depth) goes on to wsgidav, which answers it as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from wsgidav import util as wsgidav_util
from wsgidav.mw.base_mw import BaseMiddleware

from idcfs.vfs.body import VIEWS, FileBody
from idcfs.webdav.propfind import CONDITIONS
from idcfs.webdav.provider import FileResource

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
#: What this path does not answer: each condition, and a Range's own.
_LEFT_TO_WSGIDAV = (*CONDITIONS, "HTTP_IF_RANGE")


class FileGet(BaseMiddleware):
    """Plain GET and HEAD of a file (see the module's docstring); behind the authenticator."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[Any]:
        if (
            environ.get("REQUEST_METHOD") not in ("GET", "HEAD")
            or any(environ.get(header) for header in _LEFT_TO_WSGIDAV)
            or environ.get("HTTP_DEPTH", "0") != "0"
            or environ.get("CONTENT_LENGTH", "0") not in ("", "0")
            or environ.get("HTTP_TRANSFER_ENCODING")
        ):
            return self.next_app(environ, start_response)
        provider = environ.get("wsgidav.provider")
        resource = None if provider is None else provider.get_resource_inst(environ["PATH_INFO"], environ)
        if not isinstance(resource, FileResource):
            return self.next_app(environ, start_response)  # a folder, or nothing: wsgidav's answers
        size = resource.get_content_length()
        wanted = environ.get("HTTP_RANGE")
        first, length = 0, size
        if wanted:
            part = _one_range(wanted, size)
            if part is None:
                return self.next_app(environ, start_response)
            first, length = part
        modified = resource.get_last_modified()
        headers = [
            ("Content-Length", str(length)),
            ("Last-Modified", wsgidav_util.get_rfc1123_time(modified)),
            ("Content-Type", resource.get_content_type()),
            ("Date", wsgidav_util.get_rfc1123_time()),
            ("ETag", f'"{resource.get_etag()}"'),
            ("Accept-Ranges", "bytes"),
        ]
        if wanted:
            headers.append(("Content-Range", f"bytes {first}-{first + length - 1}/{size}"))
            start_response("206 Partial Content", headers)
        else:
            start_response("200 OK", headers)
        if environ["REQUEST_METHOD"] == "HEAD" or not length:
            return [b""]
        opened = resource.open()
        return FileBody(opened, first, length, resource.vfs.block_size, bool(environ.get(VIEWS)))


def _one_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first byte, length)`` of a Range of one satisfiable byte range, else None (wsgidav's
    to answer: several ranges, one past the end, or a header it reads its own way)."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or size == 0:
        return None
    start, end = match.groups()
    if not start:  # the last ``end`` bytes
        if not end or int(end) == 0:
            return None
        first = max(0, size - int(end))
        return first, size - first
    first = int(start)
    last = size - 1 if not end else min(int(end), size - 1)
    if first >= size or first > last:
        return None
    return first, last - first + 1
