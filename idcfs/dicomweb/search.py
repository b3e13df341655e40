"""QIDO-RS searches of studies and series, answered from the catalog's columns alone.

A match is a mask over the whole catalog (:mod:`idcfs.dicomweb.matching`); a study search keeps
the studies of the matching series in the catalog's order, cuts the page asked for, and only then
reads the rows of the page's studies for their attributes (their series' modalities, counts): a
study list of a whole release costs one pass over a column and one page of records, never a
record per study. Nothing here makes a request.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcfs.dicomweb.attributes import (
    CASE_INSENSITIVE,
    COLUMN_OF,
    NOT_INDEXED,
    SERIES_DEFAULT,
    SERIES_EXTRA,
    STUDY_DEFAULT,
    STUDY_EXTRA,
    record,
)
from idcfs.dicomweb.exact import ExactIndex
from idcfs.dicomweb.matching import exact_values, mask_for
from idcfs.dicomweb.query import Query

#: The identifier columns whose exact values are looked up rather than matched row by row.
_INDEXED = frozenset({"PatientID", "StudyInstanceUID", "SeriesInstanceUID"})
#: The answer's character set: DICOM JSON is UTF-8.
CHARACTER_SET = "ISO_IR 192"
#: Studies and series whose rows a retrieval looked up, kept (a viewer asks for one series many
#: times: its metadata, then each of its frames).
LOOKUPS_KEPT = 1024

_STUDY_LEVEL = frozenset({*STUDY_DEFAULT, *STUDY_EXTRA})
_SERIES_LEVEL = frozenset({*SERIES_DEFAULT, *SERIES_EXTRA})


@dataclass
class Page:
    """The records of one page, whether more follow it, and what the client should be told
    (a Warning header each)."""

    records: list[dict[str, Any]]
    more: bool
    warnings: list[str] = field(default_factory=list)


class CatalogSearch:
    """Searches over ``table`` (the catalog's series table, one row per series)."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table
        self._study_uids = table.column("StudyInstanceUID")
        self._series_uids = table.column("SeriesInstanceUID")
        self._indexes: dict[str, ExactIndex] = {}
        self._lock = threading.Lock()
        self._all_studies: pa.Array | None = None
        self.study_rows = functools.lru_cache(maxsize=LOOKUPS_KEPT)(self._study_rows)
        self.series_row = functools.lru_cache(maxsize=LOOKUPS_KEPT)(self._series_row)

    # -- lookups for retrievals ---------------------------------------------------------------

    def _study_rows(self, study: str) -> tuple[int, ...]:
        return tuple(int(row) for row in self._rows_of("StudyInstanceUID", [study]))

    def _series_row(self, study: str, series: str) -> int | None:
        for row in self._rows_of("SeriesInstanceUID", [series]):
            if self._study_uids[int(row)].as_py() == study:
                return int(row)
        return None

    def prepare(self) -> None:
        """Build the identifier indexes and the default study list, in the background from the
        start: until one is built, what needs it scans the column instead of waiting."""
        for column in sorted(_INDEXED):
            index = ExactIndex(self._table.column(column))
            with self._lock:
                self._indexes[column] = index
        unique = pc.unique(self._study_uids)
        with self._lock:
            if self._all_studies is None:
                self._all_studies = unique

    def _rows_of(self, column: str, values: list[str]) -> np.ndarray:
        """The rows holding any of ``values`` in ``column``, ascending."""
        with self._lock:
            index = self._indexes.get(column)
        if index is not None:
            return index.rows_of(values)
        found = pc.is_in(self._table.column(column), value_set=pa.array(values, pa.string()))
        return np.flatnonzero(pc.fill_null(found, False).to_numpy(zero_copy_only=False))

    def value(self, row: int, column: str) -> Any:
        return self._table.column(column)[row].as_py()

    # -- searches -----------------------------------------------------------------------------

    def studies(self, query: Query, base: str) -> Page:
        warnings: list[str] = []
        rows = self._candidates(query, _STUDY_LEVEL | _SERIES_LEVEL, warnings)
        if rows is None:
            with self._lock:
                if self._all_studies is None:
                    self._all_studies = pc.unique(self._study_uids)  # the default study list's
                unique = self._all_studies
        else:
            unique = pc.unique(self._study_uids.take(pa.array(rows)))  # in the tree's order
        page = unique.slice(query.offset, query.limit)
        more = query.offset + len(page) < len(unique)
        if not len(page):
            return Page([], more, warnings)
        rows = self._rows_of("StudyInstanceUID", page.to_pylist())
        wanted = _wanted(query, STUDY_DEFAULT, STUDY_EXTRA)
        columns = _columns_of(self._table, rows)
        by_study: dict[str, list[int]] = {}
        for position, uid in enumerate(columns["StudyInstanceUID"]):
            by_study.setdefault(uid, []).append(position)
        records = [
            record(_study_values(columns, by_study[uid], wanted, base)) for uid in page.to_pylist() if uid in by_study
        ]
        return Page(records, more, warnings)

    def series_rows(
        self, query: Query, study: str | None, warnings: list[str], leave: frozenset[str] = frozenset()
    ) -> np.ndarray:
        """The rows of the series ``query`` matches (in ``study`` when given), its keys in
        ``leave`` left out (matched by the caller, on the instances)."""
        levels = _SERIES_LEVEL if study is not None else _SERIES_LEVEL | _STUDY_LEVEL
        kept = Query({k: v for k, v in query.matches.items() if k not in leave})
        if study is not None:
            kept.matches["StudyInstanceUID"] = study
        rows = self._candidates(kept, levels | {"StudyInstanceUID"}, warnings)
        return np.arange(self._table.num_rows) if rows is None else rows

    def series(self, query: Query, base: str, study: str | None = None) -> Page:
        warnings: list[str] = []
        rows = self.series_rows(query, study, warnings)
        page = rows[query.offset : query.offset + query.limit]
        more = query.offset + len(page) < len(rows)
        wanted = _wanted(query, SERIES_DEFAULT, SERIES_EXTRA)
        if study is None:  # a search of all series also tells each one's study
            wanted |= _wanted(query, STUDY_DEFAULT, STUDY_EXTRA) - {
                "ModalitiesInStudy",
                "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances",
                "SOPClassesInStudy",
            }
        columns = _columns_of(self._table, page)
        records = [record(_series_values(columns, position, wanted, base)) for position in range(len(page))]
        return Page(records, more, warnings)

    def _candidates(self, query: Query, level: frozenset[str], warnings: list[str]) -> np.ndarray | None:
        """The rows ``query`` matches, ascending (None: every row). Exact values of identifier
        columns are looked up (:mod:`idcfs.dicomweb.exact`); the other keys are then matched on
        those rows only, or on the whole column when there are none."""
        rows: np.ndarray | None = None
        rest: list[tuple[str, str, str]] = []
        for keyword, value in query.matches.items():
            if keyword in NOT_INDEXED:
                if value not in ("", "*"):
                    warnings.append(f"{keyword} is not in IDC's index: every result has it empty")
                    return np.zeros(0, dtype=np.int64)
                continue
            column = COLUMN_OF.get(keyword)
            if column is None or keyword not in level | {"Modality", "SeriesInstanceUID", "SOPClassUID"}:
                warnings.append(f"{keyword} is not supported for matching at this level: ignored")
                continue
            values = exact_values(keyword, value)
            if column in _INDEXED and values is not None and keyword not in CASE_INSENSITIVE:
                found = self._rows_of(column, values)
                rows = found if rows is None else np.intersect1d(rows, found, assume_unique=True)
            else:
                rest.append((keyword, value, column))
        for keyword, value, column in rest:
            values = self._table.column(column)
            if rows is not None:
                values = values.take(pa.array(rows))
            mask = mask_for(values, keyword, value, keyword in CASE_INSENSITIVE)
            if mask is not None:
                chosen = np.flatnonzero(mask.to_numpy())
                rows = chosen if rows is None else rows[chosen]
        return rows


def _wanted(query: Query, default: Iterable[str], extra: Iterable[str]) -> set[str]:
    known = {*default, *extra}
    if query.include_all:
        return known
    return {*default, *(keyword for keyword in query.include if keyword in known)}


def _columns_of(table: pa.Table, rows: np.ndarray) -> dict[str, list[Any]]:
    """The rows' values of every column a record may need, as Python lists (one conversion per
    column for the page, not per value)."""
    taken = table.take(pa.array(rows, pa.int64()))
    names = {*COLUMN_OF.values(), "instanceCount"}
    return {name: taken.column(name).to_pylist() for name in names if name in taken.column_names}


def _first(values: list[Any], positions: list[int]) -> Any:
    return next((values[p] for p in positions if values[p] not in (None, "")), None)


def _study_values(columns: dict[str, list[Any]], positions: list[int], wanted: set[str], base: str) -> dict[str, Any]:
    uid = columns["StudyInstanceUID"][positions[0]]
    counts = [columns["instanceCount"][p] for p in positions]
    values: dict[str, Any] = {
        "SpecificCharacterSet": CHARACTER_SET,
        "StudyInstanceUID": uid,
        "StudyDate": _first(columns["StudyDate"], positions),
        "StudyDescription": _first(columns["StudyDescription"], positions),
        "PatientID": _first(columns["PatientID"], positions),
        "PatientSex": _first(columns["PatientSex"], positions),
        "PatientAge": _first(columns["PatientAge"], positions),
        "ModalitiesInStudy": sorted({columns["Modality"][p] for p in positions} - {None}),
        "SOPClassesInStudy": sorted({columns["SOPClassUID"][p] for p in positions} - {None}),
        "NumberOfStudyRelatedSeries": len(positions),
        "NumberOfStudyRelatedInstances": None if None in counts else sum(counts),
        "InstanceAvailability": "ONLINE",
        "RetrieveURL": f"{base}/studies/{uid}",
    }
    return {keyword: values.get(keyword) for keyword in wanted}


def _series_values(columns: dict[str, list[Any]], position: int, wanted: set[str], base: str) -> dict[str, Any]:
    study = columns["StudyInstanceUID"][position]
    series = columns["SeriesInstanceUID"][position]
    values: dict[str, Any] = {column: columns[column][position] for column in columns}
    values.update(
        {
            "SpecificCharacterSet": CHARACTER_SET,
            "NumberOfSeriesRelatedInstances": columns["instanceCount"][position],
            "InstanceAvailability": "ONLINE",
            "RetrieveURL": f"{base}/studies/{study}/series/{series}",
            "PatientName": None,
        }
    )
    return {keyword: values.get(keyword) for keyword in wanted}
