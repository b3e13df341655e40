"""Selections, releases and manifests against a small hand-made index with known answers."""

from __future__ import annotations

import json
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from idcfs.catalog.index import CatalogError, IndexFiles, Selection, release_versions
from idcfs.catalog.layout import PRESETS
from idcfs.catalog.manifest import ManifestError, read_manifest
from idcfs.catalog.snapshot import open_snapshot


def _uuid(tag: str) -> str:
    """A valid UUID that spells ``tag`` (hex of its ASCII) in its first group."""
    return f"{tag.encode().hex():0>8}-0000-4000-8000-000000000000"


def _current(tag, collection, patient, study, modality, series, revised, license="CC BY 4.0", date="2001-01-01"):
    return {
        "collection_id": collection,
        "PatientID": patient,
        "StudyInstanceUID": study,
        "Modality": modality,
        "SeriesInstanceUID": series,
        "crdc_series_uuid": _uuid(tag),
        "aws_bucket": "idc-open-data",
        "series_aws_url": f"s3://idc-open-data/{_uuid(tag)}/*",
        "license_short_name": license,
        "source_DOI": "10.0/x",
        "series_init_idc_version": 1,
        "series_revised_idc_version": revised,
        "instanceCount": 2,
        "series_size_MB": 1.0,
        "StudyDate": date,
        "SeriesNumber": "1",
        "SeriesDescription": f"{modality} / axial" if modality != "SEG" else None,
    }


def _prior(tag, collection, patient, study, modality, series, first, last, bucket="idc-open-data"):
    return {
        "collection_id": collection,
        "PatientID": patient,
        "SeriesInstanceUID": series,
        "StudyInstanceUID": study,
        "Modality": modality,
        "gcs_bucket": "idc-open-data",
        "crdc_series_uuid": _uuid(tag),
        "series_size_MB": 1.0,
        "series_aws_url": f"s3://{bucket}/{_uuid(tag)}/*",
        "aws_bucket": bucket,
        "min_idc_version": first,
        "max_idc_version": last,
    }


CURRENT = [
    _current("a1", "c1", "p1", "1.1", "CT", "1.1.1", 3),
    _current("b1", "c1", "p1", "1.1", "SEG", "1.1.2", 1),
    _current("c1", "c1", "p2", "1.2", "MR", "1.2.1", 4, date="2010-05-05"),
    _current("d1", "c2", "p3", "2.1", "CT", "2.1.1", 2, license="CC BY-NC 4.0"),
    _current("e1", "c2", "p3", "2.1", "MR", "2.1.2", 5, date="2012-01-01"),
]
PRIOR = [
    _prior("a0", "c1", "p1", "1.1", "CT", "1.1.1", 1, 2),
    _prior("c0", "c1", "p2", "1.2", "MR", "1.2.1", 2, 2, bucket="idc-open-data-two"),
    _prior("c0", "c1", "p2", "1.2", "MR", "1.2.1", 3, 3),  # the same object listed again after a bucket move
    _prior("z0", "c1", "p9", "9.1", "CT", "9.1.1", 1, 3),  # a series withdrawn in release 4
]
VERSIONS = [{"idc_version": v, "version_timestamp": f"202{v}-01-0{v}"} for v in range(1, 6)]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> IndexFiles:
    folder = tmp_path_factory.mktemp("small-index")
    pq.write_table(pa.Table.from_pylist(CURRENT), folder / "idc_index.parquet")
    pq.write_table(pa.Table.from_pylist(PRIOR), folder / "prior_versions_index.parquet")
    pq.write_table(pa.Table.from_pylist(VERSIONS), folder / "version_metadata_index.parquet")
    return IndexFiles.from_path(folder / "idc_index.parquet")


def mounted(files, cache_dir=None, layout="default", **selection):
    return open_snapshot(files, layout, Selection(**selection), cache_dir).tree


def tags(tree) -> set[str]:
    uuids = tree.catalog.series.column("crdc_series_uuid").to_pylist()
    return {bytes.fromhex(u[:8]).lstrip(b"\0").decode() for u in uuids}


def test_the_current_release_by_default(files):
    assert tags(mounted(files)) == {"a1", "b1", "c1", "d1", "e1"}


@pytest.mark.parametrize(
    "version, expected",
    [
        (1, {"b1", "a0", "z0"}),
        (2, {"b1", "d1", "a0", "c0", "z0"}),
        (3, {"a1", "b1", "d1", "c0", "z0"}),
        (4, {"a1", "b1", "c1", "d1"}),
        (5, {"a1", "b1", "c1", "d1", "e1"}),
    ],
)
def test_release_n_as_it_was(files, version, expected):
    tree = mounted(files, idc_version=version)
    assert tags(tree) == expected
    assert tree.catalog.idc_version == version


def test_historical_series_keep_their_own_bucket_and_path(files):
    tree = mounted(files, idc_version=2)
    series = tree.catalog.series
    row = series.column("crdc_series_uuid").to_pylist().index(_uuid("c0"))
    assert series.column("aws_bucket")[row].as_py() == "idc-open-data"  # the newest listing of that object
    assert tree.path_of_row(row) == ["c1", "p2", "1.2", "MR_1.2.1"]
    assert (series.column("min_idc_version")[row].as_py(), series.column("max_idc_version")[row].as_py()) == (2, 3)


def test_unknown_version_is_refused(files):
    with pytest.raises(CatalogError, match="not in the bundled data"):
        mounted(files, idc_version=99)


def test_versions_listing(files):
    assert release_versions(files) == [
        (1, "2021-01-01", 3),
        (2, "2022-01-02", 5),
        (3, "2023-01-03", 5),
        (4, "2024-01-04", 4),
        (5, "2025-01-05", 5),
    ]


@pytest.mark.parametrize(
    "selection, expected",
    [
        ({"collections": ("c2",)}, {"d1", "e1"}),
        ({"modalities": ("CT",)}, {"a1", "d1"}),
        ({"modalities": ("CT", "MR"), "collections": ("c1",)}, {"a1", "c1"}),
        # As TCIA and people write them: case and punctuation aside, the one value they match.
        ({"modalities": ("ct", "M-R"), "collections": ("C1",)}, {"a1", "c1"}),
        ({"no_commercial_restrictions": True}, {"a1", "b1", "c1", "e1"}),
        ({"licenses": ("cc by-nc 4.0",)}, {"d1"}),
        ({"where": "StudyDate >= '2010-01-01' AND Modality = 'MR'"}, {"c1", "e1"}),
        ({"where": "series_revised_idc_version <= 2", "idc_version": 2}, {"b1", "d1", "a0", "c0", "z0"}),
    ],
)
def test_selections(files, selection, expected):
    assert tags(mounted(files, **selection)) == expected


def test_empty_folders_never_appear(files):
    tree = mounted(files, modalities=("SEG",))
    assert list(tree.children(tree.root)) == ["c1"]
    assert list(tree.children(tree.lookup(["c1"]))) == ["p1"]


@pytest.mark.parametrize(
    "selection, message",
    [
        ({"where": "NoSuchColumn = 1"}, "cannot apply --where"),
        ({"where": "Modality = "}, "cannot apply --where"),
        ({"collections": ("c1x",)}, r"--collection 'c1x' is not in the index \(did you mean 'c1'\?\)"),
        ({"modalities": ("XX",)}, "--modality 'XX' is not in the index"),
        ({"where": "Modality = 'PT'"}, "matches no series"),
        # --where sees the index only: no file of the machine, no writes, no extensions.
        ({"where": "EXISTS (SELECT 1 FROM read_text('/etc/hostname'))"}, "refused: it may use the index's columns"),
        ({"where": "EXISTS (SELECT 1 FROM read_csv('/etc/passwd'))"}, "refused"),
        ({"where": "EXISTS (SELECT 1 FROM glob('/etc/*'))"}, "refused"),
        ({"where": "TRUE) AND (SELECT 1 FROM read_blob('/etc/hostname')) = 1 AND (TRUE"}, "refused"),
    ],
)
def test_bad_selections_are_clear_errors(files, selection, message):
    with pytest.raises(CatalogError, match=message):
        mounted(files, **selection)


def _manifest(tmp_path, text, name="manifest.txt"):
    path = tmp_path / name
    path.write_text(text)
    return read_manifest(path)


def test_s5cmd_manifest_serves_historical_uuids(files, tmp_path):
    manifest = _manifest(
        tmp_path,
        f"# from the portal\ncp s3://idc-open-data/{_uuid('a0')}/* .\ncp s3://idc-open-data/{_uuid('c1')}/* ./dest\n\n",
    )
    tree = mounted(files, manifest=manifest)
    assert tags(tree) == {"a0", "c1"}


def test_plain_list_mixes_uuids_and_series_uids(files, tmp_path):
    manifest = _manifest(
        tmp_path, f"{_uuid('d1').upper()}\n2.1.2  # by SeriesInstanceUID: the current version\n9.1.1\n"
    )  # withdrawn: its newest prior version
    assert tags(mounted(files, manifest=manifest)) == {"d1", "e1", "z0"}


def test_series_uids_resolve_within_a_version(files, tmp_path):
    manifest = _manifest(tmp_path, "1.1.1\n1.2.1\n")
    assert tags(mounted(files, manifest=manifest, idc_version=2)) == {"a0", "c0"}
    assert tags(mounted(files, manifest=manifest)) == {"a1", "c1"}


def test_json_manifest(files, tmp_path):
    manifest = _manifest(
        tmp_path, json.dumps({"crdc_series_uuids": [_uuid("b1"), _uuid("z0")], "idc_version": 5}), "m.json"
    )
    assert tags(mounted(files, manifest=manifest)) == {"b1", "z0"}


def test_bad_manifest_lines_are_reported_with_line_numbers(tmp_path):
    with pytest.raises(ManifestError) as error:
        _manifest(tmp_path, f"{_uuid('a1')}\nnot an id\ncp s3://idc-open-data/nouuid/* .\n")
    assert "line 2" in str(error.value) and "line 3" in str(error.value)
    with pytest.raises(ManifestError, match="invalid JSON"):
        _manifest(tmp_path, "{not json", "bad.json")
    with pytest.raises(ManifestError, match="names no series"):
        _manifest(tmp_path, "# nothing\n\n")


def test_unknown_manifest_ids_refuse_the_mount_unless_allowed(files, tmp_path):
    unknown = _uuid("ffff")
    manifest = _manifest(tmp_path, f"{_uuid('a1')}\n{unknown}\n7.7.7\n")
    with pytest.raises(CatalogError) as error:
        mounted(files, manifest=manifest)
    assert f"line 2: {unknown}" in str(error.value) and "line 3: 7.7.7" in str(error.value)
    assert "--allow-missing" in str(error.value)
    tree = mounted(files, manifest=manifest, allow_missing=True)
    assert tags(tree) == {"a1"}
    assert "7.7.7" in tree.catalog.info["warnings"][0]


def test_any_index_column_in_a_template(files):
    tree = mounted(files, layout="%collection_id/%StudyDate/%SeriesNumber-%SeriesDescription_%crdc_series_uuid")
    assert list(tree.children(tree.lookup(["c1"]))) == ["2001-01-01", "2010-05-05"]
    leaves = list(tree.children(tree.lookup(["c1", "2001-01-01"])))
    assert leaves == [f"1-CT %2F axial_{_uuid('a1')}", f"1-_{_uuid('b1')}"]  # '/' escaped, NULL empty
    assert tree.catalog.template.columns[-1] == "crdc_series_uuid"


def test_snapshot_is_reused_and_keyed_by_selection(files, tmp_path):
    first = open_snapshot(files, "default", Selection(collections=("c1",)), tmp_path)
    again = open_snapshot(files, "default", Selection(collections=("c1",)), tmp_path)
    other = open_snapshot(files, "default", Selection(collections=("c2",)), tmp_path)
    assert first.built and not again.built and other.built
    assert first.folder == again.folder != other.folder
    assert tags(again.tree) == tags(first.tree) == {"a1", "b1", "c1"}
    assert bytes(again.manifest) == bytes(first.manifest)
    assert bytes(again.manifest).decode().splitlines()[0] == f"cp s3://idc-open-data/{_uuid('a1')}/* ."


def test_a_damaged_snapshot_is_rebuilt(files, tmp_path):
    first = open_snapshot(files, "default", Selection(), tmp_path)
    expected = tags(first.tree)
    (first.folder / "series.arrow").write_bytes(b"garbage")
    again = open_snapshot(files, "default", Selection(), tmp_path)
    assert again.built and tags(again.tree) == expected


def test_what_a_removal_left_never_passes_for_a_snapshot_and_a_new_build_replaces_it(files, tmp_path):
    """On Windows a snapshot another process maps cannot be removed whole: its mark of
    completeness goes first, and what stays is cleared by the next build of its key."""
    first = open_snapshot(files, "default", Selection(), tmp_path)
    expected = tags(first.tree)
    (first.folder / "info.json").unlink()  # as the removal left it: the mapped files still there
    again = open_snapshot(files, "default", Selection(), tmp_path)
    assert again.built and again.folder == first.folder and tags(again.tree) == expected
    assert (again.folder / "info.json").exists()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_round_trips_on_the_real_index(preset):
    tree = open_snapshot(IndexFiles.bundled(), preset, Selection(), None).tree
    assert tree.catalog.num_series > 1_000_000
    rng = random.Random(preset)
    for row in rng.sample(range(tree.catalog.num_series), 2000):
        node = tree.lookup(tree.path_of_row(row))
        assert node is not None and node.index == row


def test_duckdb_never_draws_its_progress_bar():
    """It would print into stdout (a forked catalog build's answer) once a query runs past 2 s."""
    from idcfs.catalog.index import index_connection

    connection = index_connection(IndexFiles.bundled())
    try:
        assert connection.execute("SELECT current_setting('enable_progress_bar')").fetchone() == (False,)
    finally:
        connection.close()


def test_one_snapshot_for_every_spelling_and_a_warm_spelling_needs_no_query(files, tmp_path, monkeypatch):
    """``Lung-PET-CT-Dx``, ``lung_pet_ct_dx`` and ``LUNG-PET-CT-DX`` are one selection: one snapshot,
    never three pushing others out; a spelling seen before finds it without querying the index."""
    import idcfs.catalog.snapshot as snapshot

    spellings = [("c1",), ("C-1",), ("C_1",)]
    opened = [
        open_snapshot(files, "default", Selection(collections=spelling, modalities=("ct",)), tmp_path)
        for spelling in spellings
    ]
    assert [s.built for s in opened] == [True, False, False]
    assert len({s.folder for s in opened}) == 1 and tags(opened[1].tree) == {"a1"}
    assert len([p for p in tmp_path.iterdir() if (p / "info.json").exists()]) == 1

    def no_query(*args):
        raise AssertionError("the index was queried for a spelling seen before")

    monkeypatch.setattr(snapshot, "spelt_as_indexed", no_query)
    again = open_snapshot(files, "default", Selection(collections=("C-1",), modalities=("ct",)), tmp_path)
    assert again.folder == opened[0].folder and not again.built
    shutil.rmtree(opened[0].folder)
    snapshot._prune(tmp_path)  # an alias of a snapshot gone goes too
    assert not list(tmp_path.glob("*.alias"))
