"""A folder's or a file's IDC metadata as ``user.idc.*`` extended attributes (``getfattr -d``).

A folder above the series level tells the values its path stands for (collection, patient,
study, ...), how many series it holds and their size; a series folder and its files tell what
identifies and licenses the series, where it lives, and, for a file, the object's own URL, ETag
and size. All of it comes from the catalog and the series listing: no request of its own.
"""

from __future__ import annotations

import re

import pyarrow.compute as pc

from idcfs.catalog.index import SERIES_COLUMNS, Catalog
from idcfs.remote.buckets import object_url
from idcfs.remote.objects import ObjectInfo

PREFIX = "user.idc."
#: Catalog columns shown as they are on a series (the bucket becomes ``url``, the two version
#: columns ``idc_versions``).
_SERIES_SHOWN = tuple(c for c in SERIES_COLUMNS if c not in ("aws_bucket", "min_idc_version", "max_idc_version"))


def _snake(column: str) -> str:
    """``StudyInstanceUID`` -> ``study_instance_uid``: the xattr name of an index column."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", column).lower()


def _named(values: dict[str, object]) -> dict[str, str]:
    return {PREFIX + key: str(value) for key, value in values.items() if value not in (None, "")}


def _path_values(catalog: Catalog, depth: int, row: int) -> dict[str, object]:
    """The values the first ``depth`` names of a path stand for (those of series ``row``)."""
    return {
        _snake(column): catalog.series.column(column)[row].as_py()
        for segment in catalog.template.segments[:depth]
        for column in segment.columns
    }


def folder_xattrs(catalog: Catalog, depth: int, rows: range) -> dict[str, str]:
    """A folder ``depth`` levels down holding the series ``rows``."""
    series = catalog.series
    values: dict[str, object] = {}
    if depth == 0:
        values["idc_version"] = catalog.idc_version
    elif len(rows):
        values.update(_path_values(catalog, depth, rows.start))
    values["series_count"] = len(rows)
    size = pc.sum(series.column("series_size_MB").slice(rows.start, len(rows))).as_py() or 0
    values["size_mb"] = round(size, 3)
    return _named(values)


def series_xattrs(catalog: Catalog, row: int, source: str, file: ObjectInfo | None = None) -> dict[str, str]:
    """Series ``row`` of the catalog, or one of its files."""
    series = catalog.series

    def value(column: str) -> object:
        return series.column(column)[row].as_py()

    values = _path_values(catalog, catalog.template.depth, row)
    values.update((_snake(column), value(column)) for column in _SERIES_SHOWN)
    values["license"] = values.pop("license_short_name")
    uuid, bucket = str(value("crdc_series_uuid")), str(value("aws_bucket"))
    values["url"] = object_url(source, bucket, f"{uuid}/*")
    last = value("max_idc_version")
    values["idc_versions"] = f"{value('min_idc_version')}-{last if last is not None else ''}"
    if file is not None:
        values["url"] = object_url(source, bucket, f"{uuid}/{file.name}")
        values["crdc_instance_uuid"] = file.name.removesuffix(".dcm")
        values["etag"] = file.etag
        values["size"] = file.size
    return _named(values)
