"""What each file operation asks of its series' catalog row, kept at hand for the series in use.

A value out of an Arrow column costs ~20 µs, and a file's lookup, open and reads ask for its
series' UUID, bucket and time 5-10 times: kept in a bounded LRU of plain tuples instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pyarrow as pa

from idcfs.catalog.index import Catalog

#: Series rows kept at hand (a few hundred bytes each).
ROWS_KEPT = 4096


class SeriesRows:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        series = catalog.series
        self._uuid = series.column("crdc_series_uuid")
        self._bucket = _values_of(series.column("aws_bucket"))
        self._revised = series.column("series_revised_idc_version")
        self._modality = series.column("Modality")
        self._row = functools.lru_cache(maxsize=ROWS_KEPT)(self._read_row)

    def _read_row(self, row: int) -> tuple[str, str, int]:
        release = self._catalog.release_time(self._revised[row].as_py())
        return self._uuid[row].as_py(), self._bucket(row), int(release * 1e9)

    def uuid(self, row: int) -> str:
        return self._row(row)[0]

    def bucket(self, row: int) -> str:
        return self._row(row)[1]

    def time_ns(self, row: int) -> int:
        """When the series' version was released (its folder's and files' time)."""
        return self._row(row)[2]

    def modality(self, row: int) -> str | None:
        value = self._modality[row].as_py()
        return None if value is None else str(value)


def _values_of(column: pa.ChunkedArray) -> Callable[[int], str]:
    """A column of a few distinct strings (a dictionary: the buckets), by row, without making
    pyarrow scalars: the first dictionary scalar made in a process's first new thread costs
    ~0.3 ms, and that thread is the FUSE thread of a fresh mount's first series lookup."""
    if pa.types.is_dictionary(column.type) and column.num_chunks == 1 and column.null_count == 0:
        chunk = column.chunk(0)
        names = [str(name) for name in chunk.dictionary.to_pylist()]
        indices = chunk.indices.to_numpy(zero_copy_only=True)
        return lambda row: names[indices[row]]
    return lambda row: column[row].as_py()
