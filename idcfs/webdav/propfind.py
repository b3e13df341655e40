"""PROPFIND streamed: the multistatus is written a batch of members at a time.

wsgidav builds the whole multistatus as one XML tree and then one string, so listing a
26,000-entry folder held both at once. Here each member's ``<response>`` is made by wsgidav's
own property code (the same values, the same 404 propstats for unknown names), serialised
and sent in batches: memory stays that of one batch whatever the folder holds. The body
has no length and goes chunked (HTTP/1.1), as Apache's mod_dav sends it.

Only what is certain to be ours is taken: PROPFIND of depth 0 or 1 of a resource of the tree,
with no conditional header. Everything else goes on to wsgidav unchanged. (This also answers
RFC 4918's ``DAV:propname``, which wsgidav reads as ``DAV:name``.)
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any
from xml.etree import ElementTree

from wsgidav import util
from wsgidav.dav_error import HTTP_BAD_REQUEST, DAVError
from wsgidav.mw.base_mw import BaseMiddleware

from idcfs.webdav.provider import FileResource, Folder

#: Set in the environ of a request whose multistatus is streamed: its answer has no length (it is
#: chunked), which wsgidav takes for a reason to close the connection; the server keeps it.
STREAMED = "idcfs.webdav.streamed"

#: Responses serialised and sent together: one call of ElementTree's serialiser per response
#: cost more than building them.
BATCH = 256

#: The request headers that make an answer conditional (such a PROPFIND is left to wsgidav).
CONDITIONS = ("HTTP_IF", "HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_UNMODIFIED_SINCE")
_HEAD = b'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">'
_TAIL = b"</D:multistatus>\n"
_ROOT, _END = b'<D:multistatus xmlns:D="DAV:">', b"</D:multistatus>"

# The DAV: namespace written as ``D:``, as every client's examples show it (ElementTree would
# otherwise invent ``ns0:``); wsgidav's own answers take it too.
ElementTree.register_namespace("D", "DAV:")


#: The propfind's children that say what it asks (``DAV:name`` is what wsgidav reads for RFC
#: 4918's ``DAV:propname``).
_MODES = {"{DAV:}allprop": "allprop", "{DAV:}propname": "name", "{DAV:}name": "name", "{DAV:}prop": "named"}


def requested(environ: dict[str, Any]) -> tuple[str, list[str] | None]:
    """The PROPFIND body's mode ("allprop", "name" or "named") and, if named, the names."""
    body = util.parse_xml_body(environ, allow_empty=True)
    if body is None:
        return "allprop", None  # RFC 4918 9.1: an empty body asks for all properties
    if body.tag != "{DAV:}propfind":
        raise DAVError(HTTP_BAD_REQUEST, context_info="the body is not a DAV:propfind")
    mode: str | None = None
    names: list[str] = []
    for node in body:
        kind = _MODES.get(node.tag)
        if kind is None:
            continue  # e.g. DAV:include, which only widens allprop
        if mode is not None and mode != kind:
            raise DAVError(HTTP_BAD_REQUEST, context_info="allprop, propname and prop exclude each other")
        mode = kind
        names.extend(child.tag for child in node)
    if mode is None:
        raise DAVError(HTTP_BAD_REQUEST, context_info="the propfind names no properties")
    return mode, names if mode == "named" else None


def multistatus(
    resources: Iterable[Folder | FileResource], mode: str, names: list[str] | None
) -> Generator[bytes, None, None]:
    """Each resource's response, as XML in chunks of :data:`BATCH` responses."""
    head = _HEAD
    batch = ElementTree.Element("{DAV:}multistatus")
    for resource in resources:
        util.add_property_response(batch, resource.get_href(), resource.get_properties(mode, name_list=names))
        if len(batch) == BATCH:
            yield head + _serialised(batch)
            head, batch = b"", ElementTree.Element("{DAV:}multistatus")
    yield head + _serialised(batch) + _TAIL


def _serialised(batch: ElementTree.Element) -> bytes:
    """The responses of ``batch``, without the element that holds them."""
    if not len(batch):
        return b""
    whole = ElementTree.tostring(batch, encoding="utf-8")
    if whole.startswith(_ROOT) and whole.endswith(_END):
        return whole[len(_ROOT) : -len(_END)]
    # Another namespace (a property asked for by name) is declared on the holder: serialised one
    # by one, each response declares what it uses.
    return b"".join(ElementTree.tostring(response, encoding="utf-8") for response in batch)


class StreamedPropfind(BaseMiddleware):
    """In wsgidav's middleware stack after authentication, before the request resolver."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (
            environ.get("REQUEST_METHOD") != "PROPFIND"
            or environ.get("HTTP_DEPTH") not in ("0", "1")
            or any(environ.get(header) for header in CONDITIONS)
        ):
            return self.next_app(environ, start_response)
        provider = environ.get("wsgidav.provider")
        resource = provider.get_resource_inst(environ["PATH_INFO"], environ) if provider is not None else None
        if not isinstance(resource, Folder | FileResource):
            return self.next_app(environ, start_response)  # not found: wsgidav's 404
        mode, names = requested(environ)
        with_members = isinstance(resource, Folder) and environ["HTTP_DEPTH"] == "1"
        body = multistatus(resource.with_members() if with_members else [resource], mode, names)
        first = next(body)  # the listing is fetched here: a failure is still a whole error answer
        environ[STREAMED] = True
        start_response(
            "207 Multi-Status",
            [("Content-Type", "application/xml; charset=utf-8"), ("Date", util.get_rfc1123_time())],
        )
        return _chained(first, body)


def _chained(first: bytes, rest: Generator[bytes, None, None]) -> Iterator[bytes]:
    try:
        yield first
        yield from rest
    finally:
        rest.close()  # the client went away mid-listing: no generator left behind
