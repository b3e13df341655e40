"""How a series' metadata becomes a path: templates and reversible name escaping.

Templates use idc-index's ``dirTemplate`` syntax (``%collection_id/%PatientID/...``) so that a
mount and an ``idc-index`` download put a series at the same relative path. Each ``/``-separated
level of a template is a *segment*: literal text and ``%column`` references.

Escaping is defined once here in Python and once as a DuckDB SQL expression (the catalog escapes
a million names inside DuckDB, where a Python loop would cost seconds at mount time). A unit test
checks the two agree on hostile values.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from idcfs.util.suggest import closest

#: idc-index's default ``dirTemplate``; the default tree of a mount.
DEFAULT_TEMPLATE = "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID"

#: Named layouts, selectable with ``--layout NAME``.
PRESETS: dict[str, str] = {
    "default": DEFAULT_TEMPLATE,
    # The bucket's own view: one folder per crdc_series_uuid, as in s3://<bucket>/<uuid>/.
    "flat": "%crdc_series_uuid",
    "by-modality": "%collection_id/%Modality/%PatientID/%StudyInstanceUID/%SeriesInstanceUID",
}

#: Longest name (bytes) a Linux file system accepts for one path component.
NAME_MAX = 255

# Characters of an over-long name kept before its hash: 4-byte characters still fit NAME_MAX.
_LONG_NAME_KEEP = 48

#: The name an empty or missing value gets; a lone ``%`` never results from escaping a value.
EMPTY_NAME = "%"

# Characters that cannot appear in a path component, plus the escape character itself.
_ESCAPED_CHARS = {"%": "%25", "/": "%2F", "\x00": "%00"}
_ESCAPE_TABLE = str.maketrans(_ESCAPED_CHARS)
_TOKEN = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")


class TemplateError(ValueError):
    """A template that cannot be used; the message names the offending token."""


@dataclass(frozen=True)
class Segment:
    """One path level of a template: alternating literal text and column names.

    ``parts`` holds ``(is_column, text)`` pairs in order.
    """

    parts: tuple[tuple[bool, str], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(text for is_column, text in self.parts if is_column)


@dataclass(frozen=True)
class Template:
    """A parsed layout template: the text it came from and its segments, top level first."""

    text: str
    segments: tuple[Segment, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the template uses, each once, in order of first use."""
        seen: dict[str, None] = {}
        for segment in self.segments:
            for column in segment.columns:
                seen.setdefault(column, None)
        return tuple(seen)

    @property
    def depth(self) -> int:
        return len(self.segments)


def parse_template(text: str, known_columns: set[str]) -> Template:
    """Parse ``text`` (a preset name or a ``%column`` template) into segments.

    ``known_columns`` (the index's columns) decides where a column name ends, as in idc-index,
    where ``%Modality_%SeriesInstanceUID`` uses ``_`` as a separator, and lets a typo be rejected
    at mount time with a message naming the bad token instead of producing a tree of empty names.
    """
    if "%" not in text and text.strip() and text not in PRESETS:  # meant as a preset name
        close = closest(text.lower(), PRESETS)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise TemplateError(
            f"unknown layout {text!r} ({hint}presets: {', '.join(PRESETS)}; "
            "or an idc-index dirTemplate such as %collection_id/%PatientID/%SeriesInstanceUID)"
        )
    text = PRESETS.get(text, text)
    if not text.strip("/"):
        raise TemplateError("layout template is empty")
    segments = []
    for raw in text.strip("/").split("/"):
        if not raw:
            raise TemplateError(f"layout template {text!r} has an empty level ('//')")
        segments.append(_parse_segment(raw, text, known_columns))
    return Template(text=text, segments=tuple(segments))


def _parse_segment(raw: str, template: str, known_columns: set[str]) -> Segment:
    parts: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(raw):
        if raw[pos] != "%":
            literal_end = raw.find("%", pos)
            literal_end = len(raw) if literal_end < 0 else literal_end
            parts.append((False, raw[pos:literal_end]))
            pos = literal_end
            continue
        token = _TOKEN.match(raw, pos)
        if token is None:
            raise TemplateError(f"layout template {template!r}: '%' in {raw!r} is not followed by a column name")
        column = _known_prefix(token.group(1), known_columns)
        if column is None:
            raise TemplateError(
                f"layout template {template!r}: unknown column %{token.group(1)} "
                f"(columns of the index: {', '.join(sorted(known_columns))})"
            )
        parts.append((True, column))
        pos += 1 + len(column)
    if not any(is_column for is_column, _ in parts):
        raise TemplateError(f"layout template {template!r}: level {raw!r} names no column")
    return Segment(parts=tuple(parts))


def _known_prefix(name: str, known_columns: set[str]) -> str | None:
    """The longest known column that ``name`` starts with, ending at its end or at a ``_``."""
    for cut in range(len(name), 0, -1):
        if name[:cut] in known_columns and (cut == len(name) or name[cut] == "_"):
            return name[:cut]
    return None


def escape_value(value: str | None) -> str:
    """Escape one metadata value so it can stand inside a path component, reversibly."""
    if value is None:
        return ""
    return value.translate(_ESCAPE_TABLE)


def finish_name(name: str) -> str:
    """Make a joined segment a valid, unambiguous path component.

    A name longer than NAME_MAX bytes keeps its first characters and gets ``%~`` and the MD5 of
    the whole name: still unique and deterministic, though no longer reversible by
    :func:`unescape_name` (the tree maps it back). ``%~`` never results from escaping.
    """
    if name == "":
        return EMPTY_NAME
    if name in (".", ".."):
        return name.replace(".", "%2E")
    if len(name.encode()) > NAME_MAX:
        return name[:_LONG_NAME_KEEP] + "%~" + hashlib.md5(name.encode()).hexdigest()
    return name


def escape_name(value: str | None) -> str:
    """The path component for a single value (a segment made of one column)."""
    return finish_name(escape_value(value))


def unescape_name(name: str) -> str:
    """Invert :func:`escape_name` (an empty value comes back as ``""``)."""
    if name == EMPTY_NAME:
        return ""
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), name)


def sql_escape_value(column_sql: str) -> str:
    """DuckDB expression equal to :func:`escape_value` of a column (``%`` first, as in Python).

    Almost no value needs escaping, so the replacements run only when one of the characters is
    present: a million names are computed at mount time.
    """
    value = f"coalesce(CAST({column_sql} AS VARCHAR), '')"
    escaped = value
    for char, replacement in _ESCAPED_CHARS.items():
        char_sql = "chr(0)" if char == "\x00" else sql_literal(char)
        escaped = f"replace({escaped}, {char_sql}, {sql_literal(replacement)})"
    needs = " OR ".join(
        f"contains({value}, {'chr(0)' if char == chr(0) else sql_literal(char)})" for char in _ESCAPED_CHARS
    )
    return f"(CASE WHEN {needs} THEN {escaped} ELSE {value} END)"


def sql_segment_join(segment: Segment) -> str:
    """DuckDB expression joining a segment's escaped values and literals (before :func:`sql_finish_name`)."""
    pieces = [sql_escape_value(f'"{text}"') if is_column else sql_literal(text) for is_column, text in segment.parts]
    return " || ".join(pieces)


def sql_finish_name(joined_sql: str) -> str:
    """DuckDB twin of :func:`finish_name`; ``joined_sql`` should be a column, evaluated once."""
    j = joined_sql
    return (
        f"(CASE WHEN {j} = '' THEN {sql_literal(EMPTY_NAME)} "
        f"WHEN {j} IN ('.', '..') THEN replace({j}, '.', '%2E') "
        f"WHEN strlen({j}) > {NAME_MAX} THEN left({j}, {_LONG_NAME_KEEP}) || '%~' || md5({j}) "
        f"ELSE {j} END)"
    )


def sql_literal(text: str) -> str:
    """A DuckDB string literal of ``text`` (the index's paths and the user's values are quoted
    this one way, in the tree's names and in the catalog's filters alike)."""
    return "'" + str(text).replace("'", "''") + "'"


#: Values that meet every rule of the escaping: what it makes of them is part of a snapshot's key.
_ESCAPING_PROBES = ("", ".", "..", "plain", "a/b", "50%", "nul\x00", "sp ace+&", "x" * 300, "é" * 200)


def escaping_fingerprint() -> str:
    """A digest of what the escaping does (in Python, and the SQL the tree's names are built
    with): a stored tree whose names another escaping produced must not be served as current."""
    outputs = [repr(sorted(_ESCAPE_TABLE.items()))] + [escape_name(value) for value in _ESCAPING_PROBES]
    outputs += [sql_escape_value('"c"'), sql_finish_name("j"), str(NAME_MAX), EMPTY_NAME]
    return hashlib.sha256("\n".join(outputs).encode()).hexdigest()[:16]
