"""The catalog and tree on a small generated index with hostile IDs, and on the real bundled one."""

from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from idcfs.catalog.index import SERIES_COLUMNS, IndexFiles, Selection
from idcfs.catalog.layout import escape_name
from idcfs.catalog.snapshot import open_snapshot


def build_tree(files, layout="default", selection=None, cache_dir=None):
    return open_snapshot(files, layout, selection or Selection(), cache_dir).tree


def _row(collection, patient, study, modality, series, uuid, bucket="idc-open-data"):
    return {
        "collection_id": collection,
        "PatientID": patient,
        "StudyInstanceUID": study,
        "Modality": modality,
        "SeriesInstanceUID": series,
        "crdc_series_uuid": uuid,
        "aws_bucket": bucket,
        "license_short_name": "CC BY 4.0",
        "source_DOI": "10.0/x",
        "series_revised_idc_version": 20,
        "instanceCount": 3,
        "series_size_MB": 1.5,
        "StudyDate": "2001-01-01",
    }


ROWS = [
    _row("c1", "p1", "1.1", "CT", "1.1.1", "u1"),
    _row("c1", "p1", "1.1", "SEG", "1.1.2", "u2"),
    _row("c1", "p/2", "1.2", "MR", "1.2.1", "u3"),
    _row("c1", "..", "1.3", "CT", "1.3.1", "u4"),
    _row("c1", "", "1.4", None, "1.4.1", "u5"),
    _row("c2", "p1", "2.1", "CT", "2.1.1", "u6", "idc-open-data-cr"),
    _row("c2", "p1", "2.1", "CT", "2.1.1", "u7", "idc-open-data-cr"),  # same path as u6: a collision
    _row("c2", "x" * 300, "2.2", "CT", "2.2.1", "u8"),
]


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "idc_index.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    return build_tree(IndexFiles.from_path(path))


def test_top_levels(small_tree):
    tree = small_tree
    assert list(tree.children(tree.root)) == ["c1", "c2"]
    c1 = tree.lookup(["c1"])
    assert sorted(tree.children(c1)) == sorted(["p1", "p%2F2", "%2E%2E", "%"])
    assert tree.lookup(["c1", "p%2F2", "1.2", "MR_1.2.1"]) is not None
    assert tree.lookup(["c1", "%", "1.4", "_1.4.1"]) is not None
    assert tree.lookup(["c3"]) is None and tree.lookup(["c1", "p/2"]) is None


def test_collisions_get_the_series_uuid_on_every_member(small_tree):
    study = small_tree.lookup(["c2", "p1", "2.1"])
    assert list(small_tree.children(study)) == ["CT_2.1.1~u6", "CT_2.1.1~u7"]


def test_every_series_round_trips(small_tree):
    uuids = small_tree.catalog.series.column("crdc_series_uuid").to_pylist()
    assert sorted(uuids) == [r["crdc_series_uuid"] for r in ROWS]
    for row in range(small_tree.catalog.num_series):
        node = small_tree.lookup(small_tree.path_of_row(row))
        assert node is not None and small_tree.is_series(node) and node.index == row


def test_long_ids_become_short_unique_names(small_tree):
    names = list(small_tree.children(small_tree.lookup(["c2"])))
    assert all(len(n.encode()) <= 255 for n in names)
    assert any("%~" in n for n in names)


def test_rows_under_a_folder(small_tree):
    assert len(small_tree.rows(small_tree.lookup(["c1"]))) == 5
    assert len(small_tree.rows(small_tree.root)) == len(ROWS)


def test_catalog_keeps_the_series_metadata(small_tree):
    assert set(SERIES_COLUMNS) <= set(small_tree.catalog.series.column_names)


@pytest.fixture(scope="module")
def real_tree(shared_catalogs):
    return build_tree(IndexFiles.bundled(), cache_dir=shared_catalogs)


def test_real_index_round_trips_a_sample(real_tree):
    catalog = real_tree.catalog
    assert catalog.num_series > 1_000_000
    collections = duckdb.sql(f"SELECT count(DISTINCT collection_id) FROM '{IndexFiles.bundled().index}'").fetchall()
    assert real_tree.num_children(real_tree.root) == collections[0][0]  # one folder per collection
    rng = random.Random(1)
    for row in rng.sample(range(catalog.num_series), 3000):
        parts = real_tree.path_of_row(row)
        node = real_tree.lookup(parts)
        assert node is not None and node.index == row
        modality = catalog.series.column("Modality")[row].as_py()
        assert parts[3].startswith(escape_name(modality) + "_")


def test_real_index_children_are_sorted_and_unique(real_tree):
    nlst = real_tree.lookup(["nlst"])
    patients = list(real_tree.children(nlst))
    assert len(patients) > 20_000
    encoded = [p.encode() for p in patients]
    assert encoded == sorted(encoded) and len(set(encoded)) == len(encoded)


BUILD_APART = """
import sys
from pathlib import Path
from idcfs.catalog.index import IndexFiles, Selection
from idcfs.catalog.snapshot import open_snapshot

selection = Selection(collections=("nlst",))
snapshot = open_snapshot(IndexFiles.bundled(), "default", selection, Path(sys.argv[1]), build_apart=True)
tree = snapshot.tree
print(snapshot.built, snapshot.folder is not None, "duckdb" in sys.modules, tree.num_children(tree.root))
"""


def test_a_daemon_builds_its_catalog_in_a_child_and_maps_what_it_stored(tmp_path):
    """The build's DuckDB never runs in the serving process (its heap leaves with the child)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", BUILD_APART, str(tmp_path)], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["True", "True", "False", "1"]
    again = subprocess.run([sys.executable, "-c", BUILD_APART, str(tmp_path)], capture_output=True, text=True)
    assert again.stdout.split() == ["False", "True", "False", "1"]  # stored: loaded, not built


def test_without_fork_the_catalog_is_built_in_a_new_interpreter_as_on_windows(tmp_path):
    """The same, where ``os.fork`` does not exist (tests/windows_like): no DuckDB in the
    serving process either."""
    import os
    import subprocess
    import sys

    from tests.conftest import PYTHON_AS_ON_WINDOWS

    env = {**os.environ, **PYTHON_AS_ON_WINDOWS}
    run = subprocess.run([sys.executable, "-c", BUILD_APART, str(tmp_path)], capture_output=True, text=True, env=env)
    assert run.stdout.split() == ["True", "True", "False", "1"], run.stderr
