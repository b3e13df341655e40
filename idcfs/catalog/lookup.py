"""From the identifiers IDC users hold to the folders of a mount (``idcfs path``, ``Mount.path``).

People find data with idc-index, the portal or a paper's table, and come with a
SeriesInstanceUID, a StudyInstanceUID, a PatientID or a crdc_series_uuid; only the catalog knows
where the mount's layout and selection put it. The kind is told by shape where it can be (a
CRDC UUID, a DICOM UID) and otherwise by which column holds the value; nothing here touches the
network. A lookup scans the catalog's columns (milliseconds for a million series) rather than
keeping an index: memory stays what the catalog costs, whatever is looked up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcfs.catalog.identifiers import SERIES_ID_COLUMNS, is_crdc_uuid, is_dicom_uid
from idcfs.catalog.tree import Tree


@dataclass(frozen=True)
class Found:
    """Where an identifier is: its kind, and the folders (paths below the mount root)."""

    kind: str
    folders: tuple[str, ...]


def kinds_for(identifier: str) -> tuple[str, ...]:
    """The kinds ``identifier`` can be, most likely first: a PatientID can look like anything,
    a DICOM UID is digits and dots, a crdc_series_uuid is a UUID."""
    if is_crdc_uuid(identifier):
        return ("crdc_series_uuid", "PatientID")
    if is_dicom_uid(identifier):
        return ("SeriesInstanceUID", "StudyInstanceUID", "PatientID")
    return ("PatientID",)


def find(tree: Tree, identifier: str) -> Found | None:
    """The folders of ``identifier`` in ``tree``, or None when the mount holds no such series.

    A series identifier gives its series folder. A study or patient gives the folder the layout
    makes for it (several if the layout splits it, e.g. by modality); a layout with no such
    level (``flat``) gives the series folders instead.
    """
    series, identifier = tree.catalog.series, identifier.strip()
    for kind in kinds_for(identifier):
        rows = _matching_rows(series.column(kind), identifier)
        if rows.size:
            return Found(kind, _folders(tree, kind, rows))
    return None


def _matching_rows(column: pa.ChunkedArray, value: str) -> np.ndarray:
    equal = pc.fill_null(pc.equal(column, pa.scalar(value, column.type)), False)
    return np.flatnonzero(equal.to_numpy(zero_copy_only=False))


def _folders(tree: Tree, kind: str, rows: np.ndarray) -> tuple[str, ...]:
    depth = tree.depth
    if kind not in SERIES_ID_COLUMNS:
        levels = [k for k, segment in enumerate(tree.catalog.template.segments) if kind in segment.columns]
        depth = levels[0] + 1 if levels else depth
    folders = ("/".join(tree.path_of_row(int(row))[:depth]) for row in rows)
    return tuple(dict.fromkeys(folders))  # rows are in path order: so are the folders
