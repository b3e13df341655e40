"""Which series exist, and their metadata, read from the bundled ``idc-index-data`` parquet.

The index has ~1.04M rows. Loading it as pandas (what ``IDCClient()`` does) costs seconds and
gigabytes, so the catalog asks DuckDB for only the columns the tree and the xattrs need, computes
each path level's escaped name inside DuckDB, sorts by them once, and hands back Arrow arrays.
Nothing here knows about FUSE or the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcfs.catalog.layout import Template, parse_template, sql_finish_name, sql_literal, sql_segment_join
from idcfs.catalog.manifest import Manifest
from idcfs.util.suggest import closest

if TYPE_CHECKING:
    import duckdb

#: Per-series columns always kept, for attributes, xattrs and the manifest. The layout's own
#: columns are kept too. Low-cardinality strings are dictionary-encoded.
SERIES_COLUMNS = (
    "crdc_series_uuid",
    "aws_bucket",
    "collection_id",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "license_short_name",
    "source_DOI",
    "series_revised_idc_version",
    "instanceCount",
    "series_size_MB",
    "min_idc_version",
    "max_idc_version",
)
#: Study and series attributes the index holds, kept so that a DICOMweb search over a whole
#: release is answered without a request (idcfs/dicomweb). An index without one of them (an
#: older release, a hand-made index) gets it as NULL. Only the pages a search touches are read.
ATTRIBUTE_COLUMNS = (
    "StudyDate",
    "StudyDescription",
    "PatientAge",
    "PatientSex",
    "SeriesDate",
    "SeriesDescription",
    "SeriesNumber",
    "BodyPartExamined",
    "SOPClassUID",  # as the index has it per series: what QIDO's instance level and WADO answer
    "TransferSyntaxUID",
)
_DICTIONARY_COLUMNS = (
    "aws_bucket",
    "collection_id",
    "Modality",
    "license_short_name",
    "source_DOI",
    *ATTRIBUTE_COLUMNS,  # repeated within a study, and across a collection (dates, descriptions)
)
#: Columns ``prior_versions_index`` has of its own; the rest of a prior row comes from the
#: current row of the same SeriesInstanceUID (or NULL when the series is gone).
_PRIOR_OWN_COLUMNS = (
    "collection_id",
    "PatientID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "crdc_series_uuid",
    "series_size_MB",
    "aws_bucket",
    "series_aws_url",
)


class CatalogError(ValueError):
    """The index cannot be read or queried as asked; the message says why."""


@dataclass(frozen=True)
class IndexFiles:
    """Where the parquet files of one index release are: the series index, and beside it
    (when present) ``prior_versions_index.parquet`` and ``version_metadata_index.parquet``."""

    index: Path
    prior: Path | None
    version_metadata: Path | None

    @classmethod
    def bundled(cls) -> IndexFiles:
        """The files shipped by the installed ``idc-index-data`` package."""
        import idc_index_data

        return cls._beside(Path(str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)))

    @classmethod
    def from_path(cls, index: str | os.PathLike[str]) -> IndexFiles:
        """An index file given by the user, with its companion files beside it when present."""
        path = Path(index)
        if not path.is_file():
            raise CatalogError(f"index file not found: {path}")
        return cls._beside(path)

    @classmethod
    def _beside(cls, index: Path) -> IndexFiles:
        def companion(name: str) -> Path | None:
            path = index.with_name(name)
            return path if path.exists() else None

        return cls(index, companion("prior_versions_index.parquet"), companion("version_metadata_index.parquet"))

    def identity(self) -> list[list[object]]:
        """What identifies these files' content (path, size, mtime), for the catalog cache key."""
        out: list[list[object]] = []
        for path in (self.index, self.prior, self.version_metadata):
            if path is None:
                out.append([None])
                continue
            st = path.stat()
            out.append([str(path), st.st_size, st.st_mtime_ns])
        return out


@dataclass(frozen=True)
class Selection:
    """Which series to mount: filters over the index, a release, or a manifest (all optional)."""

    collections: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    licenses: tuple[str, ...] = ()
    no_commercial_restrictions: bool = False
    where: str | None = None
    idc_version: int | None = None
    manifest: Manifest | None = None
    allow_missing: bool = False
    #: (K, N): only the K-th of N parts (K from 1), split by PatientID; see :func:`shard_of`.
    shard: tuple[int, int] | None = None

    def describe(self) -> dict[str, object]:
        """The selection as plain data (for ``/.idcfs/version`` and the cache key)."""
        out: dict[str, object] = {}
        for name in ("collections", "modalities", "licenses", "where", "idc_version"):
            value = getattr(self, name)
            if value:
                out[name] = list(value) if isinstance(value, tuple) else value
        if self.no_commercial_restrictions:
            out["no_commercial_restrictions"] = True
        if self.shard is not None:
            out["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        if self.manifest is not None:
            out["manifest"] = self.manifest.path
            out["manifest_ids"] = hashlib.sha256(
                "\n".join(f"{e.kind}:{e.value}" for e in self.manifest.entries).encode()
            ).hexdigest()
            if self.allow_missing:
                out["allow_missing"] = True
        return out


@dataclass
class Catalog:
    """The mounted series, one row each, sorted by their path in the layout.

    ``series`` holds :data:`SERIES_COLUMNS` and the layout's columns, row ``i`` being the ``i``-th
    series in path order. ``info`` holds what describes the mount as a whole (release, dates,
    selection, layout) in JSON-able form.
    """

    template: Template
    series: pa.Table
    info: dict[str, Any]

    @property
    def num_series(self) -> int:
        return self.series.num_rows

    @property
    def idc_version(self) -> int:
        return int(self.info["idc_version"])

    def release_time(self, idc_version: int | None = None) -> float:
        """POSIX time of a release (the mounted one by default): the tree's stable mtimes."""
        dates = self.info.get("release_dates", {})
        version = self.idc_version if idc_version is None else idc_version
        return float(dates.get(str(version), dates.get(str(self.idc_version), 0.0)))


def shard_of(patient_id: str | None, count: int) -> int:
    """The part (1 to ``count``) that ``--shard K/N`` puts a patient's series in: the first 60
    bits of the MD5 of the PatientID, modulo N. A fixed function of the ID alone, so every node,
    release and tool (the SQL of :func:`_shard_condition`, a Dask driver) agrees."""
    return int(hashlib.md5((patient_id or "").encode()).hexdigest()[:15], 16) % count + 1


def _shard_condition(shard: tuple[int, int]) -> str:
    part, count = shard
    return f"CAST(('0x' || left(md5(coalesce(PatientID, '')), 15)) AS BIGINT) % {int(count)} = {int(part) - 1}"


def index_columns(files: IndexFiles) -> set[str]:
    """Column names of the index, for validating templates."""
    import pyarrow.parquet as pq

    return set(pq.read_schema(files.index).names) | {"min_idc_version", "max_idc_version"}


def load_catalog(
    files: IndexFiles, template_text: str, selection: Selection | None = None
) -> tuple[Catalog, list[pa.Array]]:
    """Query the index for ``selection`` laid out by ``template_text``.

    Returns the catalog and, per path level, every row's escaped name (rows sorted bytewise by
    path), from which :mod:`idcfs.catalog.tree` builds the folders.
    """
    selection = selection or Selection()
    columns = index_columns(files)
    template = parse_template(template_text, columns)
    missing = [c for c in SERIES_COLUMNS if c not in columns]
    if missing:
        raise CatalogError(f"index {files.index} lacks columns {missing}")
    if (selection.idc_version is not None or selection.manifest is not None) and files.prior is None:
        raise CatalogError(f"no prior_versions_index.parquet beside {files.index}: versions and manifests need it")

    table, release_dates, warnings, selection = _query(files, template, selection, columns)
    if table.num_rows == 0:
        raise CatalogError(f"the selection matches no series: {json.dumps(selection.describe())}")
    levels = [f"l{k}" for k in range(template.depth)]
    table = _separate_collisions(table, levels)
    level_names = [_plain(table.column(name)) for name in levels]
    series = _series_table(table, keep=[c for c in table.column_names if c not in levels])
    current = max((int(v) for v in release_dates), default=0)
    if not release_dates and series.num_rows:
        current = int(pc.max(series.column("series_revised_idc_version")).as_py() or 0)
    info = {
        "idc_version": selection.idc_version or current,
        "latest_idc_version": current,
        "release_dates": {str(k): v for k, v in release_dates.items()},
        "layout": template.text,
        "selection": selection.describe(),
        "num_series": series.num_rows,
        "warnings": warnings,
    }
    return Catalog(template=template, series=series, info=info), level_names


def _query(
    files: IndexFiles, template: Template, selection: Selection, columns: set[str]
) -> tuple[pa.Table, dict[int, float], list[str], Selection]:
    """The selected rows with each path level's escaped name, sorted by path; the release
    dates; the warnings of a manifest mounted with allow_missing; and the selection with its
    values as the index spells them."""
    import duckdb

    connection = index_connection(files)
    try:
        release_dates = _release_dates(connection, files)
        _check_version(selection, release_dates)
        rows = _candidate_rows(files, columns, with_prior=files.prior is not None and _needs_prior(selection))
        selection = _canonical_values(connection, rows.sql, selection)
        warnings = _check_manifest(connection, rows.sql, selection)
        table = _fetch_arrow(connection.sql(_named_query(rows, template, selection, columns)))
    except duckdb.Error as error:
        raise CatalogError(_explain_query_error(error, selection)) from None
    finally:
        connection.close()
    return table, release_dates, warnings, selection


def _series_table(table: pa.Table, keep: list[str]) -> pa.Table:
    """The columns kept per series, contiguous, the repetitive ones dictionary-encoded."""
    return pa.table(
        {
            name: (
                table.column(name).dictionary_encode() if name in _DICTIONARY_COLUMNS else table.column(name)
            ).combine_chunks()
            for name in keep
        }
    )


def index_connection(files: IndexFiles) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that can read the index's own files and nothing else.

    ``--where`` is SQL from the user (or from an fstab line someone else wrote): with external
    access off and the configuration locked, ``read_text('/etc/shadow')``, ``COPY ... TO``,
    ``ATTACH`` and ``INSTALL`` are refused, whatever the expression says.
    """
    import duckdb

    connection = duckdb.connect(config={"threads": max(1, min(4, os.cpu_count() or 1))})
    allowed = [str(path) for path in (files.index, files.prior, files.version_metadata) if path is not None]
    connection.execute("SET allowed_paths = $1", [allowed])
    connection.execute("SET enable_external_access = false")
    # No progress bar: DuckDB draws one on stdout once a query runs past 2 s (a busy machine),
    # and stdout is where a forked catalog build's or a command's answer goes. In a Jupyter
    # kernel without ipywidgets (idc:// in a notebook) DuckDB refuses the change, and draws none.
    with contextlib.suppress(duckdb.InvalidInputException):
        connection.execute("SET enable_progress_bar = false")
    connection.execute("SET lock_configuration = true")
    return connection


def _needs_prior(selection: Selection) -> bool:
    return selection.idc_version is not None or selection.manifest is not None


def _check_version(selection: Selection, release_dates: dict[int, float]) -> None:
    version = selection.idc_version
    if version is None:
        return
    if release_dates and version not in release_dates:
        known = f"{min(release_dates)}..{max(release_dates)}"
        raise CatalogError(f"IDC version {version} is not in the bundled data (known: {known}; see: idcfs versions)")


def _in_list(values: tuple[str, ...] | list[str]) -> str:
    return "(" + ", ".join(sql_literal(v) for v in values) + ")"


@dataclass(frozen=True)
class _CandidateRows:
    """The SQL of every row a selection chooses from, and whether prior versions are among them
    (then a series may have several rows, and the query must pick one)."""

    sql: str
    with_prior: bool


def _candidate_rows(files: IndexFiles, columns: set[str], with_prior: bool) -> _CandidateRows:
    """Every candidate row: the current index, plus (when asked) each prior version of a series."""
    current = (
        f"SELECT *, series_revised_idc_version AS min_idc_version, CAST(NULL AS BIGINT) AS max_idc_version "
        f"FROM read_parquet({sql_literal(str(files.index))})"
    )
    if not with_prior:
        return _CandidateRows(current, with_prior=False)
    borrowed_out = [c for c in (*_PRIOR_OWN_COLUMNS, "series_revised_idc_version", "instanceCount") if c in columns]
    own = ", ".join(f"p.{c}" for c in _PRIOR_OWN_COLUMNS)
    prior = f"""
        SELECT {own},
               p.min_idc_version AS series_revised_idc_version,
               CAST(NULL AS BIGINT) AS instanceCount,
               p.min_idc_version, p.max_idc_version,
               c.* EXCLUDE ({", ".join(borrowed_out)})
        FROM (
            -- One row per object: a series listed twice (a bucket move) spans both ranges and is
            -- read from where the newest row says it is now.
            SELECT * REPLACE (
                first_value(aws_bucket) OVER newest AS aws_bucket,
                first_value(series_aws_url) OVER newest AS series_aws_url,
                min(min_idc_version) OVER (PARTITION BY crdc_series_uuid) AS min_idc_version,
                max(max_idc_version) OVER (PARTITION BY crdc_series_uuid) AS max_idc_version
            )
            FROM read_parquet({sql_literal(str(files.prior))})
            WINDOW newest AS (PARTITION BY crdc_series_uuid ORDER BY max_idc_version DESC)
            QUALIFY row_number() OVER newest = 1
        ) p
        LEFT JOIN (
            SELECT * FROM read_parquet({sql_literal(str(files.index))})
            QUALIFY row_number() OVER (PARTITION BY SeriesInstanceUID ORDER BY crdc_series_uuid) = 1
        ) c ON c.SeriesInstanceUID = p.SeriesInstanceUID
    """
    return _CandidateRows(f"({current}) UNION ALL BY NAME ({prior})", with_prior=True)


def _version_condition(version: int | None) -> str:
    if version is None:
        return "max_idc_version IS NULL"  # the current release
    return f"(min_idc_version <= {int(version)} AND (max_idc_version IS NULL OR {int(version)} <= max_idc_version))"


def _filters(selection: Selection, with_prior: bool) -> list[str]:
    conditions = []
    if selection.collections:
        conditions.append(f"collection_id IN {_in_list(selection.collections)}")
    if selection.modalities:
        conditions.append(f"Modality IN {_in_list(selection.modalities)}")
    if selection.licenses:
        conditions.append(f"lower(license_short_name) IN {_in_list([v.lower() for v in selection.licenses])}")
    if selection.no_commercial_restrictions:
        # CC BY-NC (any version) forbids commercial use; an unknown license is not known to allow it.
        conditions.append(
            "license_short_name IS NOT NULL AND NOT regexp_matches(license_short_name, '(^|[^A-Za-z])NC([^A-Za-z]|$)')"
        )
    if selection.where:
        conditions.append(f"({selection.where}\n)")
    if selection.shard is not None:
        conditions.append(_shard_condition(selection.shard))
    manifest = selection.manifest
    if manifest is not None:
        by_uuid = manifest.values("crdc_series_uuid") or ["-"]
        by_uid = manifest.values("SeriesInstanceUID") or ["-"]
        uid_condition = f"SeriesInstanceUID IN {_in_list(by_uid)}"
        if selection.idc_version is not None:
            uid_condition += f" AND {_version_condition(selection.idc_version)}"
        conditions.append(f"(crdc_series_uuid IN {_in_list(by_uuid)} OR ({uid_condition}))")
    elif with_prior:
        conditions.append(_version_condition(selection.idc_version))
    return conditions


def _named_query(rows: _CandidateRows, template: Template, selection: Selection, columns: set[str]) -> str:
    with_prior = rows.with_prior
    conditions = _filters(selection, with_prior)
    where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
    # One row per series: a manifest's SeriesInstanceUID picks its newest version; a series
    # listed twice in prior_versions_index (a bucket move) is one series.
    if selection.manifest is not None:
        by_uuid = _in_list(selection.manifest.values("crdc_series_uuid") or ["-"])
        key = f"CASE WHEN crdc_series_uuid IN {by_uuid} THEN crdc_series_uuid ELSE SeriesInstanceUID END"
    else:
        key = "crdc_series_uuid"
    dedupe = f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY max_idc_version DESC NULLS FIRST) = 1"
    if not with_prior:
        dedupe = ""  # the current index has one row per crdc_series_uuid
    levels = [f"l{k}" for k in range(template.depth)]
    joined = [f"{sql_segment_join(seg)} AS j{k}" for k, seg in enumerate(template.segments)]
    named = [f"{sql_finish_name(f'j{k}')} AS {name}" for k, name in enumerate(levels)]
    keep = list(dict.fromkeys([*SERIES_COLUMNS, *ATTRIBUTE_COLUMNS, *template.columns]))
    keep_sql = ", ".join(f'"{c}"' if c in columns else f'CAST(NULL AS VARCHAR) AS "{c}"' for c in keep)
    # Names are joined in one step and finished in the next, so each is computed once.
    return f"""
        WITH selected AS (SELECT * FROM ({rows.sql}) {where} {dedupe}),
             joined AS (SELECT {", ".join(joined)}, {keep_sql} FROM selected)
        SELECT {", ".join(named)}, {keep_sql} FROM joined ORDER BY {", ".join(levels)}
    """


#: Selection fields checked against the index: (field of Selection, column, flag).
_CHECKED_VALUES = (
    ("collections", "collection_id", "--collection"),
    ("modalities", "Modality", "--modality"),
    ("licenses", "license_short_name", "--license"),
)


def spelt_as_indexed(files: IndexFiles, selection: Selection) -> Selection:
    """The selection with its --collection, --modality and --license values as the index spells
    them (see :func:`_canonical_values`), with no other work: what names a catalog snapshot, so
    ``Lung-PET-CT-Dx`` and ``lung_pet_ct_dx`` share one."""
    import duckdb

    if not any(getattr(selection, field) for field, _, _ in _CHECKED_VALUES):
        return selection
    connection = index_connection(files)
    try:
        columns = {column for _, column, _ in _CHECKED_VALUES}
        rows = _candidate_rows(files, columns, with_prior=files.prior is not None and _needs_prior(selection))
        return _canonical_values(connection, rows.sql, selection)
    except duckdb.Error as error:
        raise CatalogError(_explain_query_error(error, selection)) from None
    finally:
        connection.close()


def _canonical_values(connection: duckdb.DuckDBPyConnection, rows_sql: str, selection: Selection) -> Selection:
    """The selection with each --collection, --modality and --license as the index spells it.

    People copy TCIA's names (``LIDC-IDRI``, ``Lung-PET-CT-Dx``) or type ``ct``: a value that
    matches exactly one known value when case and punctuation are ignored is that value. Any
    other is refused with the nearest known values (a typo would mount nothing).
    """
    replaced: dict[str, tuple[str, ...]] = {}
    for field, column, flag in _CHECKED_VALUES:
        wanted = getattr(selection, field)
        if not wanted:
            continue
        known = [
            row[0]
            for row in connection.execute(
                f"SELECT DISTINCT {column} FROM ({rows_sql}) WHERE {column} IS NOT NULL ORDER BY 1"
            ).fetchall()
        ]
        replaced[field] = tuple(canonical_value(value, known, flag) for value in wanted)
    return dataclasses.replace(selection, **replaced) if replaced else selection  # type: ignore[arg-type]


def _loose(value: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", value.lower())


def canonical_value(value: str, known: list[str], flag: str) -> str:
    """``value`` as spelt in ``known``, ignoring case and punctuation; else a CatalogError
    naming the nearest known values."""
    if value in known:
        return value
    by_key: dict[str, list[str]] = {}
    for candidate in known:
        by_key.setdefault(_loose(candidate), []).append(candidate)
    same = by_key.get(_loose(value), [])
    if len(same) == 1:
        return same[0]
    if same:
        raise CatalogError(f"{flag} {value!r} could be any of {', '.join(map(repr, same))}: give one as written")
    near_keys = closest(_loose(value), by_key, n=3)
    near = [candidate for key in near_keys for candidate in by_key[key]]
    hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
    raise CatalogError(f"{flag} {value!r} is not in the index{hint}")


def release_versions(files: IndexFiles) -> list[tuple[int, str, int]]:
    """(version, release date, number of series) of every release the index files describe."""
    import duckdb

    if files.version_metadata is None or files.prior is None:
        raise CatalogError(f"no version_metadata_index.parquet / prior_versions_index.parquet beside {files.index}")
    query = f"""
        WITH v AS (SELECT idc_version, CAST(version_timestamp AS VARCHAR) AS released
                   FROM read_parquet({sql_literal(str(files.version_metadata))})),
             current AS (SELECT series_revised_idc_version AS lo FROM read_parquet({sql_literal(str(files.index))})),
             prior AS (SELECT DISTINCT crdc_series_uuid, min_idc_version AS lo, max_idc_version AS hi
                       FROM read_parquet({sql_literal(str(files.prior))}))
        SELECT v.idc_version, v.released,
               (SELECT count(*) FROM current WHERE lo <= v.idc_version)
             + (SELECT count(DISTINCT crdc_series_uuid) FROM prior WHERE lo <= v.idc_version AND v.idc_version <= hi)
        FROM v ORDER BY v.idc_version
    """
    connection = index_connection(files)
    try:
        return [(int(v), str(d)[:10], int(n)) for v, d, n in connection.execute(query).fetchall()]
    except duckdb.Error as error:
        raise CatalogError(f"cannot read the release tables: {error}") from None
    finally:
        connection.close()


def _check_manifest(connection: duckdb.DuckDBPyConnection, rows_sql: str, selection: Selection) -> list[str]:
    """Refuse (or, with allow_missing, report) manifest identifiers that match no series."""
    manifest = selection.manifest
    if manifest is None:
        return []
    unknown: list[str] = []
    for kind in ("crdc_series_uuid", "SeriesInstanceUID"):
        values = manifest.values(kind)
        if not values:
            continue
        found = {
            row[0]
            for row in connection.execute(
                f"SELECT DISTINCT {kind} FROM ({rows_sql}) WHERE {kind} IN {_in_list(values)}"
            ).fetchall()
        }
        unknown += [v for v in values if v not in found]
    if not unknown:
        return []
    lines = [f"line {', '.join(map(str, manifest.lines_of(v))) or '?'}: {v}" for v in unknown]
    message = f"manifest {manifest.path}: {len(unknown)} identifier(s) match no IDC series:\n  " + "\n  ".join(
        lines[:50]
    )
    if len(lines) > 50:
        message += f"\n  ... and {len(lines) - 50} more"
    if not selection.allow_missing:
        raise CatalogError(message + "\n(use --allow-missing to mount the rest)")
    return [message]


def _explain_query_error(error: Exception, selection: Selection) -> str:
    """DuckDB's reason, without the query it ran: after ``LINE n:`` comes idcfs's own SQL (paths
    of the index, the layout's expressions), which says nothing about the user's expression."""
    text = re.sub(r"\s*LINE \d+:.*$", "", " ".join(str(error).split()))
    if selection.where and "disabled by configuration" in text:
        return f"--where {selection.where!r} is refused: it may use the index's columns only, not read files"
    if selection.where:
        return f"cannot apply --where {selection.where!r}: {text}"
    return f"cannot query the index: {text}"


def _fetch_arrow(result: duckdb.DuckDBPyRelation) -> pa.Table:
    # DuckDB 2 renamed fetch_arrow_table() to to_arrow_table().
    return (getattr(result, "to_arrow_table", None) or result.fetch_arrow_table)()


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


def _release_dates(connection: duckdb.DuckDBPyConnection, files: IndexFiles) -> dict[int, float]:
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
