"""Templates and escaping: pure logic, plus the DuckDB twin of the escaping."""

from __future__ import annotations

import duckdb
import pytest

from idcfs.catalog.layout import (
    DEFAULT_TEMPLATE,
    EMPTY_NAME,
    NAME_MAX,
    TemplateError,
    escape_name,
    parse_template,
    unescape_name,
)

COLUMNS = {
    "collection_id",
    "PatientID",
    "StudyInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "crdc_series_uuid",
    "StudyDate",
    "SeriesDescription",
    "SeriesNumber",
}

HOSTILE = [
    "plain",
    "a/b",
    "/",
    "..",
    ".",
    "...",
    ".hidden",
    "nul\x00byte",
    "50%",
    "%2F",
    "%",
    "",
    "x" * 300,
    "é" * 200,
    "日本" * 100,
    "tab\tand\nnewline",
    " spaced ",
    "~",
    "a%~b",
]


def test_default_template_is_idc_index_dirtemplate():
    template = parse_template("default", COLUMNS)
    assert template.text == DEFAULT_TEMPLATE
    assert [s.columns for s in template.segments] == [
        ("collection_id",),
        ("PatientID",),
        ("StudyInstanceUID",),
        ("Modality", "SeriesInstanceUID"),
    ]
    assert template.segments[3].parts == ((True, "Modality"), (False, "_"), (True, "SeriesInstanceUID"))


def test_separators_and_other_columns():
    template = parse_template("%collection_id/%StudyDate-%SeriesNumber_%SeriesDescription/%crdc_series_uuid", COLUMNS)
    assert template.segments[1].parts == (
        (True, "StudyDate"),
        (False, "-"),
        (True, "SeriesNumber"),
        (False, "_"),
        (True, "SeriesDescription"),
    )
    assert template.columns == ("collection_id", "StudyDate", "SeriesNumber", "SeriesDescription", "crdc_series_uuid")


@pytest.mark.parametrize(
    "bad, token",
    [
        ("%collection_id/%NoSuchColumn", "%NoSuchColumn"),
        ("%collection_id//%PatientID", "//"),
        ("%collection_id/literal", "names no column"),
        ("%collection_id/%", "not followed by a column"),
        ("", "empty"),
        ("flatt", "did you mean 'flat'? presets: default, flat, by-modality"),
        ("By-Modality", "did you mean 'by-modality'?"),
        ("tree", "presets: default, flat, by-modality"),
    ],
)
def test_invalid_templates_name_the_bad_token(bad, token):
    with pytest.raises(TemplateError) as error:
        parse_template(bad, COLUMNS)
    assert token in str(error.value)


@pytest.mark.parametrize("value", HOSTILE)
def test_escaping_is_a_valid_name_and_reversible(value):
    name = escape_name(value)
    assert "/" not in name and "\x00" not in name
    assert name not in ("", ".", "..")
    assert len(name.encode()) <= NAME_MAX
    if len(value.encode()) * 3 <= NAME_MAX:  # short enough never to be shortened
        assert unescape_name(name) == value


def test_none_and_empty_share_the_empty_name():
    assert escape_name(None) == escape_name("") == EMPTY_NAME
    assert unescape_name(EMPTY_NAME) == ""


def test_escaping_is_injective_on_hostile_values():
    names = [escape_name(v) for v in HOSTILE]
    assert len(set(names)) == len(HOSTILE)


def test_long_names_keep_a_prefix_and_a_hash():
    name = escape_name("x" * 300)
    assert name.startswith("x" * 48) and "%~" in name
    assert escape_name("x" * 300) != escape_name("x" * 299 + "y")


def test_sql_escaping_equals_python_escaping():
    template = parse_template("%PatientID/%Modality_%SeriesInstanceUID", COLUMNS)
    rows = [(v, m, s) for v in HOSTILE for m, s in (("CT", v), (None, "1.2"), ("", ""), (".", "."))]
    connection = duckdb.connect()
    connection.execute('CREATE TABLE t ("PatientID" VARCHAR, "Modality" VARCHAR, "SeriesInstanceUID" VARCHAR)')
    connection.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    exprs = ", ".join(sql_segment_name(seg) for seg in template.segments)
    got = connection.execute(f'SELECT {exprs}, "PatientID", "Modality", "SeriesInstanceUID" FROM t').fetchall()
    for *names, patient, modality, series in got:
        row = {"PatientID": patient, "Modality": modality, "SeriesInstanceUID": series}
        assert names == [segment_name(seg, row) for seg in template.segments], row


def test_a_snapshot_key_changes_when_the_escaping_does(monkeypatch):
    """A stored tree holds the names the escaping made: another escaping must get another key."""
    from idcfs.catalog import layout
    from idcfs.catalog.index import IndexFiles, Selection
    from idcfs.catalog.snapshot import snapshot_key

    files = IndexFiles.bundled()
    before = snapshot_key(files, "default", Selection())
    assert snapshot_key(files, "default", Selection()) == before
    for table in ({**layout._ESCAPED_CHARS, "\\": "%5C"}, {**layout._ESCAPED_CHARS, "%": "%%"}):
        with monkeypatch.context() as patched:
            patched.setattr(layout, "_ESCAPE_TABLE", str.maketrans(table))
            assert snapshot_key(files, "default", Selection()) != before
    with monkeypatch.context() as patched:
        patched.setattr(layout, "EMPTY_NAME", "%empty")
        assert snapshot_key(files, "default", Selection()) != before


def sql_segment_name(segment) -> str:
    """The DuckDB expression the catalog builds a path component with."""
    from idcfs.catalog.layout import sql_finish_name, sql_segment_join

    return sql_finish_name(f"({sql_segment_join(segment)})")


def segment_name(segment, row: dict) -> str:
    """Its Python twin: the two must agree on every value."""
    from idcfs.catalog.layout import escape_value, finish_name

    joined = "".join(escape_value(row.get(text)) if is_column else text for is_column, text in segment.parts)
    return finish_name(joined)
