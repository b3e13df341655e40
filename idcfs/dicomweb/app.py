"""The DICOMweb face's place on the server: requests under ``/dicomweb`` answered here, every
other path left to the WebDAV tree, with the same authentication in front of both.

Two layers in wsgidav's middleware stack (the server assembles it: :func:`middleware`):
:class:`Cors`, ahead of the authenticator, answers a browser's preflight (which carries no
credentials) and marks answers to the origins the user named, and only those;
:class:`DicomWeb`, behind the authenticator, answers QIDO-RS and WADO-RS. Read-only: any method
that would store or delete is 405.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from wsgidav.mw.base_mw import BaseMiddleware

from idcfs.dicom.header import InstanceHeader
from idcfs.dicom.series_headers import SeriesHeaders
from idcfs.dicomweb.base_url import ROOT, base_url
from idcfs.dicomweb.instances import INSTANCE_KEYS, Instances, SeriesAt
from idcfs.dicomweb.media import NotAcceptable, bulk_as_one_part, multipart
from idcfs.dicomweb.query import Query, QueryError, parse_query
from idcfs.dicomweb.rendered import Busy, parse_render_query, rendered_type
from idcfs.dicomweb.retrieve import Part, instances, stored_dicom_accepted
from idcfs.dicomweb.search import CatalogSearch, Page
from idcfs.vfs.body import CUT_SHORT, VIEWS
from idcfs.vfs.vfs import Vfs

log = logging.getLogger(__name__)

#: The key of this face's options in wsgidav's configuration.
CONFIG = "idcfs_dicomweb"

_ALLOWED = "GET, HEAD, OPTIONS"
#: The most series one search of instances reads the headers of.
MAX_SERIES_SEARCHED = 100
_DICOM_JSON = "application/dicom+json"
_OCTETS = "application/octet-stream"

#: An answer: status, headers and body.
Answer = tuple[str, list[tuple[str, str]], Iterable[Any]]


def middleware(
    vfs: Vfs, cors_origins: Iterable[str]
) -> tuple[list[type], list[type], dict[str, Any], Callable[[], None]]:
    """What the server puts ahead of its authenticator, behind it, and into its configuration,
    and what ends the headers' reads in flight when it stops."""
    search = CatalogSearch(vfs.tree.catalog.series)
    threading.Thread(target=search.prepare, name="dicomweb-prepare", daemon=True).start()
    headers = SeriesHeaders(Path(vfs.info["cache_dir"]) / "dicom")
    options = {
        "search": search,
        "vfs": vfs,
        "instances": Instances(vfs, search, headers),
        "cors_origins": frozenset(cors_origins),
    }
    return [Cors], [DicomWeb], {CONFIG: options}, headers.close


def _is_ours(environ: dict[str, Any]) -> bool:
    path = environ.get("PATH_INFO", "")
    return path == ROOT or path.startswith(ROOT + "/")


class Cors(BaseMiddleware):
    """CORS for the origins named with ``--cors-origin`` (a browser viewer served from another
    origin than the server, OHIF's or Slim's). Never ``*``: credentials may go with requests."""

    def __init__(self, wsgidav_app: Any, next_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)
        self._origins: frozenset[str] = config[CONFIG]["cors_origins"]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[Any]:
        origin = environ.get("HTTP_ORIGIN")
        if not _is_ours(environ) or origin is None or origin not in self._origins:
            return self.next_app(environ, start_response)
        allowed = [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        ]
        if environ.get("REQUEST_METHOD") == "OPTIONS" and environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD"):
            start_response(
                "204 No Content",
                [
                    *allowed,
                    ("Access-Control-Allow-Methods", _ALLOWED),
                    ("Access-Control-Allow-Headers", environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")),
                    ("Access-Control-Max-Age", "600"),
                    ("Content-Length", "0"),
                ],
            )
            return [b""]

        def with_cors(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            exposed = ("Access-Control-Expose-Headers", "Content-Length, Content-Type, Warning")
            return start_response(status, [*headers, *allowed, exposed], exc_info)

        return self.next_app(environ, with_cors)


class DicomWeb(BaseMiddleware):
    """QIDO-RS and WADO-RS under :data:`ROOT` (see the package's modules)."""

    def __init__(self, wsgidav_app: Any, next_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)
        options = config[CONFIG]
        self._search: CatalogSearch = options["search"]
        self._vfs: Vfs = options["vfs"]
        self._instances: Instances = options["instances"]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[Any]:
        if not _is_ours(environ):
            return self.next_app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "OPTIONS":
            return _answer(start_response, "200 OK", b"", "text/plain", [("Allow", _ALLOWED)])
        if method not in ("GET", "HEAD"):
            return _error(start_response, "405 Method Not Allowed", "this server is read-only", [("Allow", _ALLOWED)])
        parts = [unquote(part) for part in environ["PATH_INFO"][len(ROOT) :].split("/") if part]
        try:
            answer = self._route(environ, parts)
            if answer is None:
                return _error(start_response, "404 Not Found", f"no such resource: {environ['PATH_INFO']}")
            status, headers, body = answer
        except QueryError as error:
            return _error(start_response, "400 Bad Request", str(error))
        except LookupError as error:
            return _error(start_response, "404 Not Found", str(error))
        except NotAcceptable as error:
            return _error(start_response, "406 Not Acceptable", str(error))
        except Busy as error:
            return _error(start_response, "503 Service Unavailable", str(error), [("Retry-After", "5")])
        except FileNotFoundError:
            return _error(start_response, "404 Not Found", f"no such resource: {environ['PATH_INFO']}")
        except OSError as error:  # the store unreachable after retries
            log.warning("DICOMweb %s: %s", environ.get("PATH_INFO"), error)
            return _error(start_response, "503 Service Unavailable", f"cannot read from the store now: {error}")
        start_response(status, headers)
        return [b""] if method == "HEAD" else _cut_short_on_failure(body, environ)

    def _route(
        self, environ: dict[str, Any], parts: list[str]
    ) -> tuple[str, list[tuple[str, str]], Iterable[Any]] | None:
        query = environ.get("QUERY_STRING", "")
        base = base_url(environ)
        match parts:
            case ["studies"]:
                return _json_page(self._search.studies(parse_query(query), base))
            case ["series"]:
                return _json_page(self._search.series(parse_query(query), base))
            case ["studies", study, "series"]:
                return _json_page(self._search.series(parse_query(query), base, study))
            case ["studies", study]:
                rows = self._search.study_rows(study)
                return self._retrieve(environ, rows) if rows else None
            case ["studies", study, "series", series]:
                row = self._search.series_row(study, series)
                return None if row is None else self._retrieve(environ, (row,))
            case ["instances"] | ["studies", _, "instances"]:
                return self._instances_of(parse_query(query), parts[1] if len(parts) == 3 else None, base)
            case ["studies", study, "metadata"]:
                rows = self._search.study_rows(study)
                if not rows:
                    return None
                at = [self._instances.series_at(row) for row in rows]
                return _json_stream(self._instances.metadata(at, base))
            case ["studies", study, "series", series, *rest]:
                row = self._search.series_row(study, series)
                return None if row is None else self._in_series(environ, self._instances.series_at(row), rest, base)
        return None

    def _in_series(self, environ: dict[str, Any], at: SeriesAt, rest: list[str], base: str) -> Answer | None:
        instances = self._instances
        match rest:
            case ["metadata"]:
                return _json_stream(instances.metadata([at], base))
            case ["instances"]:
                warnings: list[str] = []
                records, more = instances.search([at], parse_query(environ.get("QUERY_STRING", "")), base, warnings)
                return _json_page(Page(records, more, warnings))
            case ["instances", sop, *within]:
                header = instances.instance(at, sop)
                if header is None:
                    return None
                return self._in_instance(environ, at, header, within, base)
        return None

    def _instances_of(self, query: Query, study: str | None, base: str) -> Answer:
        """A search of instances over several series: those of a study, or at the root those of
        the series a StudyInstanceUID or SeriesInstanceUID key names (anything wider would read
        the headers of every series of the selection)."""
        if study is None and not any(query.matches.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID")):
            raise QueryError("a search of all instances needs a StudyInstanceUID or SeriesInstanceUID")
        warnings: list[str] = []
        rows = self._search.series_rows(query, study, warnings, leave=INSTANCE_KEYS)
        if len(rows) > MAX_SERIES_SEARCHED:
            raise QueryError(f"the search spans {len(rows)} series: name fewer (at most {MAX_SERIES_SEARCHED})")
        series = [self._instances.series_at(int(row)) for row in rows]
        records, more = self._instances.search(series, query, base, warnings)
        return _json_page(Page(records, more, warnings))

    def _in_instance(
        self, environ: dict[str, Any], at: SeriesAt, header: InstanceHeader, within: list[str], base: str
    ) -> Answer | None:
        views = bool(environ.get(VIEWS))
        match within:
            case []:
                syntax = stored_dicom_accepted(environ.get("HTTP_ACCEPT", ""), {header.transfer_syntax})
                kind, length, body = instances(
                    self._vfs, [Part(f"{at.folder}/{header.name}", header.size)], syntax, views
                )
                return "200 OK", [("Content-Type", kind), ("Content-Length", str(length))], body
            case ["metadata"]:
                found = self._instances.metadata([at], base, header.sop_instance_uid)
                return None if found is None else _json_stream(found)
            case ["frames", wanted]:
                accept = environ.get("HTTP_ACCEPT", "")
                kind, length, body = self._instances.frames(at, header, wanted, accept)
                return "200 OK", [("Content-Type", kind), ("Content-Length", str(length))], body
            case ["bulk", *place] if place:
                value = self._instances.bulk(at, header, place)
                if value is None:
                    return None
                if bulk_as_one_part(environ.get("HTTP_ACCEPT", "")):
                    return "200 OK", _octets(value), [value]
                kind, length, body = multipart(_OCTETS, [(_OCTETS, len(value))], lambda _: [value])
                return "200 OK", [("Content-Type", kind), ("Content-Length", str(length))], body
            case ["rendered"] | ["frames", _, "rendered"]:
                # An instance's rendering is its first frame's, as Orthanc's is.
                number = within[1] if len(within) == 3 else "1"
                media = rendered_type(environ.get("HTTP_ACCEPT", ""))
                options = parse_render_query(environ.get("QUERY_STRING", ""))
                image = self._instances.rendered(at, header, number, media, options)
                return "200 OK", [("Content-Type", media), ("Content-Length", str(len(image)))], [image]
        return None

    def _retrieve(
        self, environ: dict[str, Any], rows: Iterable[int]
    ) -> tuple[str, list[tuple[str, str]], Iterable[Any]]:
        rows = list(rows)
        syntaxes: set[str] = set()
        for row in rows:
            syntaxes |= set(filter(None, (self._search.value(row, "TransferSyntaxUID") or "").split(",")))
        syntax = stored_dicom_accepted(environ.get("HTTP_ACCEPT", ""), syntaxes)
        parts = []
        for row in rows:
            at = self._instances.series_at(row)
            parts += [Part(f"{at.folder}/{name}", size) for name, size in self._instances.files(at)]
        kind, length, body = instances(self._vfs, parts, syntax, bool(environ.get(VIEWS)))
        return "200 OK", [("Content-Type", kind), ("Content-Length", str(length))], body


def _json_page(page: Page) -> Answer:
    headers = [("Content-Type", _DICOM_JSON)]
    warnings = list(page.warnings)
    if page.more:
        warnings.append("There are additional results that can be requested")
    headers += [("Warning", f'299 idcfs: "{text}"') for text in warnings]
    body = json.dumps(page.records, separators=(",", ":")).encode()
    return "200 OK", [*headers, ("Content-Length", str(len(body)))], [body]


def _cut_short_on_failure(body: Iterable[Any], environ: dict[str, Any]) -> Iterator[Any]:
    """``body``, or as much of it as could be made: a store that fails midway (its status sent)
    cuts the connection, with a line in the log (the server's traceback would say no more)."""
    try:
        yield from body
    except Exception as error:  # noqa: BLE001 - whatever failed, the client is told by the cut
        cut_short = environ.get(CUT_SHORT)
        if cut_short is None:
            raise
        log.warning("DICOMweb %s: answer cut short: %s", environ.get("PATH_INFO"), error or type(error).__name__)
        cut_short()


def _json_stream(items: Iterator[bytes] | None) -> Answer | None:
    """A JSON answer sent as it is made (no length: chunked). Its first piece is made before the
    answer starts: a store that cannot be read is a 503, not an answer cut short."""
    if items is None:
        return None
    first = next(items, b"")
    return "200 OK", [("Content-Type", _DICOM_JSON)], itertools.chain([first], items)


def _octets(value: bytes) -> list[tuple[str, str]]:
    return [("Content-Type", _OCTETS), ("Content-Length", str(len(value)))]


def _answer(
    start_response: Callable[..., Any], status: str, body: bytes, kind: str, extra: list[tuple[str, str]] | None = None
) -> Iterator[bytes]:
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body))), *(extra or [])])
    yield body


def _error(
    start_response: Callable[..., Any], status: str, text: str, extra: list[tuple[str, str]] | None = None
) -> Iterator[bytes]:
    return _answer(start_response, status, (text + "\n").encode(), "text/plain; charset=utf-8", extra)
