"""The rows holding a value of an identifier column (PatientID, StudyInstanceUID,
SeriesInstanceUID), found by a binary search instead of a pass over the column.

A viewer asks for the same few things over and over (a patient's studies, a study's series, a
series for each of its frames): a pass over a million rows is milliseconds each time. The
column's distinct values are kept sorted (one buffer, :class:`~idcfs.util.names.NameArray`), with
where each one's rows lie in an order of the rows by value: built on the first use of a column,
a few bytes a row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcfs.util.names import NameArray

_NONE = np.zeros(0, dtype=np.int64)


class ExactIndex:
    """Rows by value of one column (nulls are never found)."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        valid = np.flatnonzero(pc.is_valid(column).to_numpy(zero_copy_only=False))
        values = column.take(pa.array(valid)).combine_chunks().cast(pa.string())
        order = pc.sort_indices(values).to_numpy()
        ordered = values.take(pa.array(order))
        count = len(ordered)
        starts = np.zeros(count, dtype=bool)
        if count:
            starts[0] = True
            starts[1:] = pc.not_equal(ordered.slice(1), ordered.slice(0, count - 1)).to_numpy(zero_copy_only=False)
        first = np.flatnonzero(starts)
        self._names = NameArray.from_arrow(ordered.take(pa.array(first)))
        self._first = np.append(first, count)
        self._rows = valid[order].astype(np.int64)  # rows by value; of one value, in row order

    def rows(self, value: str) -> np.ndarray:
        """The rows holding ``value``, ascending."""
        found = self._names.find(value.encode())
        if found is None:
            return _NONE
        return np.sort(self._rows[self._first[found] : self._first[found + 1]])

    def rows_of(self, values: list[str]) -> np.ndarray:
        """The rows holding any of ``values``, ascending, each once."""
        if len(values) == 1:
            return self.rows(values[0])
        parts = [self.rows(value) for value in values]
        return np.unique(np.concatenate(parts)) if parts else _NONE
