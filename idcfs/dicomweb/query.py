"""A QIDO-RS request's query string, read as PS3.18 8.3.4 spells it: attribute matches named by
keyword or tag, ``includefield``, ``limit``, ``offset`` and ``fuzzymatching``.

What a viewer sends is checked here once, so that the search itself meets only well-formed keys:
a parameter that is neither a DICOM attribute nor one of QIDO's own is an error the client is
told of (400), never silently ignored.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

#: Results a page holds when the client names no ``limit``, and the most it may ask for: a study
#: list of a whole release is paged, never built whole (OHIF asks for 101 at a time).
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000

_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


class QueryError(ValueError):
    """The query cannot be answered as written; the message says which parameter and why."""


@dataclass(frozen=True)
class Query:
    """Matches by keyword (the value as sent: a single value, a list, wildcards or a range), the
    attributes asked for beyond the defaults (``all``: every one known), and the page."""

    matches: dict[str, str] = field(default_factory=dict)
    include: frozenset[str] = frozenset()
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    fuzzy: bool = False


def keyword_of(name: str) -> str:
    """The DICOM keyword ``name`` stands for: a keyword, or a tag as 8 hex digits; else QueryError."""
    if _TAG.match(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return str(keyword)
        raise QueryError(f"{name} is not a tag of the DICOM dictionary")
    if tag_for_keyword(name) is not None:
        return name
    raise QueryError(f"{name!r} is neither a DICOM attribute's keyword nor a QIDO-RS parameter")


@functools.lru_cache(maxsize=1024)
def vr_of(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return "UN" if tag is None else str(dictionary_VR(tag))


def parse_query(text: str) -> Query:
    """The query of ``text`` (the URL's query string, undecoded)."""
    matches: dict[str, str] = {}
    include: set[str] = set()
    include_all = False
    limit, offset, fuzzy = DEFAULT_LIMIT, 0, False
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise QueryError("the query string is not UTF-8") from None
    for name, value in pairs:
        if name == "includefield":
            for item in filter(None, (part.strip() for part in value.split(","))):
                if item == "all":
                    include_all = True
                else:
                    include.add(keyword_of(item))
        elif name == "limit":
            limit = _count(name, value, minimum=1)
        elif name == "offset":
            offset = _count(name, value, minimum=0)
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise QueryError("fuzzymatching is true or false")
            fuzzy = value == "true"
        else:
            keyword = keyword_of(name.split(".")[0])  # a sequence's item (A.B) matches as A: not kept
            if "." in name:
                raise QueryError(f"{name}: matching inside a sequence is not supported")
            if keyword in matches:
                raise QueryError(f"{keyword} is given twice")
            matches[keyword] = value
    return Query(matches, frozenset(include), include_all, min(limit, MAX_LIMIT), offset, fuzzy)


def _count(name: str, value: str, minimum: int) -> int:
    if not value.isdigit() or int(value) < minimum:
        raise QueryError(f"{name} is a whole number, at least {minimum}")
    return int(value)
