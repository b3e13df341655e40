"""A QIDO match (PS3.4 C.2.2.2) as a mask over a catalog column, computed by Arrow over the whole
column at once: a million series in milliseconds, no Python object per row.

Kinds of match: universal (empty or ``*``: no mask), a list of UIDs (``,`` or ``\\``), a range of
dates (``A-B``, ``A-``, ``-B``), wildcards (``*`` and ``?``) and single values, a list of values
for code strings. A null in the catalog matches nothing but a universal match.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from idcfs.dicomweb.query import QueryError, vr_of

_DATE = re.compile(r"^\d{8}$")


def mask_for(column: pa.ChunkedArray, keyword: str, value: str, ignore_case: bool) -> pa.ChunkedArray | None:
    """Which rows ``value`` matches (True/False, never null), or None for a universal match."""
    if value in ("", "*"):
        return None
    vr = vr_of(keyword)
    if vr == "DA":
        test = _date_range(keyword, value)
    elif vr == "UI":
        wanted = [item.strip() for item in re.split(r"[,\\]", value) if item.strip()]
        if any("*" in item or "?" in item for item in wanted):
            raise QueryError(f"{keyword}: a UID is matched whole, without wildcards")
        test = _one_of(wanted, ignore_case)
    elif "*" in value or "?" in value:
        test = _wildcard(value, ignore_case)
    elif vr == "CS" or "\\" in value:
        test = _one_of([item.strip() for item in re.split(r"[,\\]", value) if item.strip()], ignore_case)
    else:
        test = _one_of([value], ignore_case)
    return _on_values(column, test)


def exact_values(keyword: str, value: str) -> list[str] | None:
    """The values a match of ``keyword`` is exactly one of (a single value, a UID list), or None
    when it is another kind of match (universal, wildcards, a range)."""
    if value in ("", "*") or "*" in value or "?" in value or vr_of(keyword) in ("DA", "TM", "DT"):
        return None
    if vr_of(keyword) in ("UI", "CS") or "\\" in value:
        return [item.strip() for item in re.split(r"[,\\]", value) if item.strip()] or None
    return [value]


def _one_of(wanted: list[str], ignore_case: bool) -> Callable[[pa.Array], pa.Array]:
    if ignore_case:
        lowered = pa.array([item.lower() for item in wanted], pa.string())
        return lambda values: pc.is_in(pc.utf8_lower(values), value_set=lowered)
    exact = pa.array(wanted, pa.string())
    return lambda values: pc.is_in(values, value_set=exact)


def _wildcard(value: str, ignore_case: bool) -> Callable[[pa.Array], pa.Array]:
    pattern = "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value) + "$"
    return lambda values: pc.match_substring_regex(values, pattern, ignore_case=ignore_case)


def _date_range(keyword: str, value: str) -> Callable[[pa.Array], pa.Array]:
    """The catalog holds dates as ``YYYY-MM-DD`` (the index's spelling): compared as strings."""
    first, dash, last = value.partition("-")
    for part in (first, last):
        if part and not _DATE.match(part):
            raise QueryError(f"{keyword}: a date is YYYYMMDD, a range YYYYMMDD-YYYYMMDD (either end may be left out)")
    if not dash:
        last = first
    low = f"{first[:4]}-{first[4:6]}-{first[6:]}" if first else None
    high = f"{last[:4]}-{last[4:6]}-{last[6:]}" if last else None

    def test(values: pa.Array) -> pa.Array:
        masks = []
        if low is not None:
            masks.append(pc.greater_equal(values, pa.scalar(low)))
        if high is not None:
            masks.append(pc.less_equal(values, pa.scalar(high)))
        if not masks:
            return pc.is_valid(values)
        return masks[0] if len(masks) == 1 else pc.and_(masks[0], masks[1])

    return test


def _on_values(column: pa.ChunkedArray, test: Callable[[pa.Array], pa.Array]) -> pa.ChunkedArray:
    """``test`` over the column's values; for a dictionary-encoded column over its few distinct
    values, then spread to the rows."""
    chunks = []
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            matched = pc.fill_null(test(chunk.dictionary.cast(pa.string())), False)
            chunks.append(pc.fill_null(pc.take(matched, chunk.indices), False))
        else:
            chunks.append(pc.fill_null(test(chunk.cast(pa.string())), False))
    return pa.chunked_array(chunks, pa.bool_())
