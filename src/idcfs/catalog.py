"""Which series exist, and their metadata, read from the bundled ``idc-index-data`` parquet.

The index has ~1.04M rows. Loading it as pandas (what ``IDCClient()`` does) costs seconds and
gigabytes, so the catalog asks DuckDB for only the columns the tree and the xattrs need, computes
each path level's escaped name inside DuckDB, sorts by them once, and hands back Arrow arrays.
Nothing here knows about FUSE or the network.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcfs.layout import Template, parse_template, sql_segment_name

#: Per-series columns kept for attributes and xattrs. Low-cardinality strings are
#: dictionary-encoded so a million rows cost a few bytes each.
SERIES_COLUMNS = (
    "crdc_series_uuid",
    "aws_bucket",
    "collection_id",
    "Modality",
    "license_short_name",
    "source_DOI",
    "series_revised_idc_version",
    "instanceCount",
    "series_size_MB",
)
_DICTIONARY_COLUMNS = ("aws_bucket", "collection_id", "Modality", "license_short_name", "source_DOI")


class CatalogError(ValueError):
    """The index cannot be read or queried as asked; the message says why."""


@dataclass(frozen=True)
class IndexFiles:
    """Where the parquet files of one index release are."""

    index: Path
    version_metadata: Path | None

    @classmethod
    def bundled(cls) -> IndexFiles:
        """The files shipped by the installed ``idc-index-data`` package."""
        import idc_index_data

        index = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)
        versions = index.with_name("version_metadata_index.parquet")
        return cls(index=index, version_metadata=versions if versions.exists() else None)

    @classmethod
    def from_path(cls, index: str | os.PathLike[str]) -> IndexFiles:
        """An index file given by the user, with its version table beside it when present."""
        path = Path(index)
        if not path.is_file():
            raise CatalogError(f"index file not found: {path}")
        versions = path.with_name("version_metadata_index.parquet")
        return cls(index=path, version_metadata=versions if versions.exists() else None)


@dataclass
class Catalog:
    """The mounted series, one row each, sorted by their path in the layout.

    ``level_names[k]`` holds the escaped name of path level ``k`` for every row; ``series`` holds
    :data:`SERIES_COLUMNS` in the same row order. Rows whose leaf paths collide carry the
    ``~<crdc_series_uuid>`` suffix on their last level (see :func:`load_catalog`).
    """

    template: Template
    level_names: list[pa.Array]
    series: pa.Table
    idc_version: int
    release_dates: dict[int, float]

    def take_level_names(self) -> list[pa.Array]:
        """Hand the per-row level names to the tree, once: it keeps only the distinct names it
        needs, and dropping the per-row copies here frees most of the catalog's memory."""
        names, self.level_names = self.level_names, []
        return names

    @property
    def num_series(self) -> int:
        return self.series.num_rows

    def release_time(self, idc_version: int | None = None) -> float:
        """POSIX time of a release (the current one by default): the tree's stable mtimes."""
        version = self.idc_version if idc_version is None else idc_version
        return self.release_dates.get(version, self.release_dates.get(self.idc_version, 0.0))


def index_columns(files: IndexFiles) -> set[str]:
    """Column names of the index, for validating templates."""
    import pyarrow.parquet as pq

    return set(pq.read_schema(files.index).names)


def load_catalog(files: IndexFiles, template_text: str) -> Catalog:
    """Query the index for the tree of ``template_text``, rows sorted by path (bytewise)."""
    import duckdb

    columns = index_columns(files)
    template = parse_template(template_text, columns)
    missing = [c for c in SERIES_COLUMNS if c not in columns]
    if missing:
        raise CatalogError(f"index {files.index} lacks columns {missing}")

    levels = [f"l{k}" for k in range(template.depth)]
    level_exprs = [f"{sql_segment_name(seg)} AS {name}" for seg, name in zip(template.segments, levels, strict=False)]
    keep = ", ".join(f'"{c}"' for c in SERIES_COLUMNS)
    source = "'" + str(files.index).replace("'", "''") + "'"
    query = f"SELECT {', '.join(level_exprs)}, {keep} FROM read_parquet({source}) ORDER BY {', '.join(levels)}"
    connection = duckdb.connect(config={"threads": max(1, min(4, os.cpu_count() or 1))})
    try:
        result = connection.sql(query)
        # DuckDB 2 renamed fetch_arrow_table() to to_arrow_table().
        table = (getattr(result, "to_arrow_table", None) or result.fetch_arrow_table)()
        release_dates = _release_dates(connection, files)
    except duckdb.Error as error:
        raise CatalogError(f"cannot read the index {files.index}: {error}") from error
    finally:
        connection.close()
    table = _separate_collisions(table, levels)

    level_names = [_plain(table.column(name)) for name in levels]
    series = table.select(list(SERIES_COLUMNS))
    series = pa.table(
        {
            name: (
                series.column(name).dictionary_encode() if name in _DICTIONARY_COLUMNS else series.column(name)
            ).combine_chunks()
            for name in SERIES_COLUMNS
        }
    )
    current = max(release_dates) if release_dates else 0
    if series.num_rows:
        current = max(current, int(pc.max(series.column("series_revised_idc_version")).as_py() or 0))
    return Catalog(
        template=template, level_names=level_names, series=series, idc_version=current, release_dates=release_dates
    )


def _separate_collisions(table: pa.Table, levels: list[str]) -> pa.Table:
    """Give series that share a leaf path distinct names: ``<leaf>~<crdc_series_uuid>``.

    Rows are sorted by path, so colliding rows are neighbours. Every member of a collision gets
    the suffix (not just the second), so a series' name does not depend on which rows sort first.
    """
    rows = table.num_rows
    if rows < 2:
        return table
    same_as_previous = np.ones(rows - 1, dtype=bool)
    for name in levels:
        column = table.column(name)
        same_as_previous &= pc.equal(column.slice(1), column.slice(0, rows - 1)).to_numpy(zero_copy_only=False)
    if not same_as_previous.any():
        return table
    colliding = np.zeros(rows, dtype=bool)
    colliding[1:] |= same_as_previous
    colliding[:-1] |= same_as_previous
    last = levels[-1]
    suffixed = pc.binary_join_element_wise(table.column(last), pa.scalar("~"), table.column("crdc_series_uuid"), "")
    renamed = pc.if_else(pa.array(colliding), suffixed, table.column(last))
    table = table.set_column(table.schema.get_field_index(last), last, renamed)
    return table.sort_by([(name, "ascending") for name in levels])


def _plain(column: pa.ChunkedArray) -> pa.Array:
    """One contiguous string array (offset 0), whose buffers the tree can index directly."""
    array = column.combine_chunks()
    return pa.concat_arrays([array]) if array.offset else array


def _release_dates(connection, files: IndexFiles) -> dict[int, float]:
    if files.version_metadata is None:
        return {}
    rows = connection.execute(
        "SELECT idc_version, version_timestamp FROM read_parquet(?)", [str(files.version_metadata)]
    ).fetchall()
    dates: dict[int, float] = {}
    for version, stamp in rows:
        try:
            day = dt.datetime.fromisoformat(str(stamp)[:10]).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        dates[int(version)] = day.timestamp()
    return dates
