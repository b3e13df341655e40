"""The DICOMweb face's searches in process: identifier values looked up, not scanned."""

from __future__ import annotations


def test_an_exact_index_finds_every_row_of_a_value():
    import numpy as np
    import pyarrow as pa

    from idcfs.dicomweb.exact import ExactIndex

    values = ["b", None, "a", "b", "c", None, "b", "a"]
    column = pa.chunked_array([pa.array(values[:3]), pa.array(values[3:])])
    index = ExactIndex(column)
    assert index.rows("b").tolist() == [0, 3, 6]
    assert index.rows("a").tolist() == [2, 7]
    assert index.rows("zzz").tolist() == [] and index.rows("").tolist() == []
    assert index.rows_of(["c", "a", "nope"]).tolist() == [2, 4, 7]
    assert np.array_equal(index.rows_of(["b"]), index.rows("b"))
