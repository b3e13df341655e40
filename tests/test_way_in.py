"""From IDC's vocabulary to paths, through real mounts: ``idcfs path``, the Python API
(``idcfs.mount``, ``Mount``), TCIA names for selections, ``--shard``, and commands that take any
path in a mount."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

import idcfs
from idcfs.catalog.index import CatalogError, canonical_value, shard_of
from idcfs.service.mounting import mounted_fuse_points

from .conftest import TEST_BLOCK_SIZE, requires_fuse, run_idcfs, source_file, start_idcfs

pytestmark = [pytest.mark.integration, requires_fuse]


def _ct(generated):
    return next(s for s in generated if s.collection_id == "lung_pet_ct_dx" and s.modality == "CT")


def test_path_finds_series_study_and_patient_folders_without_the_network(s3_mount, s3_proxy, generated):
    series = _ct(generated)
    folder = s3_mount.series_dir(series)
    s3_proxy.log.clear()
    for identifier, expected in (
        (series.series_uid, folder),
        (series.crdc_series_uuid, folder),
        (series.study_uid, folder.parent),
        (series.patient_id, folder.parent.parent),
    ):
        result = run_idcfs("path", str(s3_mount.path), identifier)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [str(expected)]
    assert s3_proxy.log.count() == 0  # answered from the catalog
    both = run_idcfs("path", str(folder), series.study_uid, "1.2.3.4.5", "NO-SUCH-PATIENT")  # any path in the mount
    assert both.returncode == 1
    assert both.stdout.splitlines() == [str(folder.parent)]
    assert "not in the mount: 1.2.3.4.5" in both.stderr and "not in the mount: NO-SUCH-PATIENT" in both.stderr
    assert sorted(os.listdir(s3_mount.path / ".idcfs")) == ["by-id", "manifest.txt", "stats", "version"]
    assert os.listdir(s3_mount.path / ".idcfs" / "by-id") == []  # answers lookups, lists nothing


def test_path_follows_the_layout_and_the_selection(mount_factory, s3_proxy, generated):
    ct = _ct(generated)
    sr = next(s for s in generated if s.modality == "SR")  # the same patient and study as ct
    mount = mount_factory(s3_proxy.url, "--layout", "by-modality", "--collection", "lung_pet_ct_dx")
    patient = run_idcfs("path", str(mount.path), ct.patient_id)
    assert patient.stdout.splitlines() == [
        str(mount.path / "lung_pet_ct_dx" / modality / ct.patient_id) for modality in sorted(("CT", "SR"))
    ]
    assert run_idcfs("path", str(mount.path), sr.series_uid).stdout.strip().endswith(f"/{sr.series_uid}")
    other = next(s for s in generated if s.collection_id != "lung_pet_ct_dx")
    missing = run_idcfs("path", str(mount.path), other.series_uid)
    assert missing.returncode == 1 and other.series_uid in missing.stderr


def test_commands_take_any_path_in_a_mount_and_say_what_is_wrong(s3_mount, generated, tmp_path):
    folder = s3_mount.series_dir(_ct(generated))
    stats = run_idcfs("stats", str(folder), "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["mountpoint"] == str(s3_mount.path)
    gone = run_idcfs("stats", str(s3_mount.path / "no-such-collection"))
    assert gone.returncode == 1
    assert gone.stderr.strip() == f"idcfs: error: {s3_mount.path}/no-such-collection does not exist"
    outside = run_idcfs("stats", str(tmp_path))
    assert outside.returncode == 1 and f"{tmp_path} is not inside an idcfs mount" in outside.stderr
    missing = run_idcfs("path", str(tmp_path / "nowhere"), "1.2.3")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    # `idcfs cache info` of a mount: the mount's own cache folder, not the default one.
    info = run_idcfs("cache", "info", str(folder))
    assert info.returncode == 0, info.stderr
    cache_dir = json.loads((s3_mount.path / ".idcfs" / "version").read_text())["cache_dir"]
    assert f"cache folder       {cache_dir}" in info.stdout.splitlines()
    both = run_idcfs("cache", "info", str(folder), "--cache-dir", str(tmp_path))
    assert both.returncode == 1 and "not both" in both.stderr


def test_tcia_names_select_their_collection_and_typos_get_the_nearest(mount_factory, s3_proxy, generated, tmp_path):
    mount = mount_factory(s3_proxy.url, "--collection", "Lung-PET-CT-Dx", "--modality", "ct", "--license", "cc-by-4.0")
    assert sorted(os.listdir(mount.path)) == [".idcfs", "lung_pet_ct_dx"]
    version = json.loads((mount.path / ".idcfs" / "version").read_text())
    assert version["selection"] == {"collections": ["lung_pet_ct_dx"], "modalities": ["CT"], "licenses": ["CC BY 4.0"]}
    cleared = run_idcfs("cache", "clear", str(mount.path))  # the mount's own cache folder, emptied while mounted
    assert cleared.returncode == 0
    assert cleared.stdout.startswith(f"cleared {version['cache_dir']} (catalog snapshots kept")
    assert os.listdir(mount.path / "lung_pet_ct_dx")  # still answers
    result, mountpoint, _ = start_idcfs(tmp_path, s3_proxy.url, "--collection", "lung_pet_ct")
    assert result.returncode == 1
    assert "--collection 'lung_pet_ct' is not in the index (did you mean 'lung_pet_ct_dx'" in result.stderr
    assert str(mountpoint) not in mounted_fuse_points()


def test_canonical_value_ignores_case_and_punctuation_only():
    known = ["lidc_idri", "lung_pet_ct_dx", "cptac_ccrcc", "CC BY 4.0", "CC BY-NC 4.0"]
    assert canonical_value("LIDC-IDRI", known, "--collection") == "lidc_idri"
    assert canonical_value("Lung-PET-CT-Dx", known, "--collection") == "lung_pet_ct_dx"
    assert canonical_value("cc by-nc 4.0", known, "--license") == "CC BY-NC 4.0"
    with pytest.raises(CatalogError, match=r"'CPTAC-CCRC' is not in the index \(did you mean 'cptac_ccrcc'\?\)"):
        canonical_value("CPTAC-CCRC", known, "--collection")
    with pytest.raises(CatalogError, match=r"could be any of 'a_b', 'a-b'"):
        canonical_value("AB", ["a_b", "a-b"], "--collection")


def test_shards_are_disjoint_and_together_the_selection(mount_factory, s3_proxy):
    selection = ("--collection", "lung_pet_ct_dx", "--collection", "midrc_ricord_1b")
    whole = mount_factory(s3_proxy.url, *selection)
    parts = [mount_factory(s3_proxy.url, *selection, "--shard", f"{k}/3") for k in (1, 2, 3)]

    def series(mount) -> set[str]:
        return set((mount.path / ".idcfs" / "manifest.txt").read_text().splitlines())

    shards = [series(part) for part in parts]
    assert all(shards) and sum(len(s) for s in shards) == len(series(whole))
    assert set().union(*shards) == series(whole)
    for k, part in enumerate(parts, start=1):  # a patient is in one part, the one shard_of names
        patients = [p for c in os.listdir(part.path) if c != ".idcfs" for p in os.listdir(part.path / c)]
        assert patients and all(shard_of(p, 3) == k for p in patients)
        assert json.loads((part.path / ".idcfs" / "version").read_text())["selection"]["shard"] == f"{k}/3"
    bad = run_idcfs("mount", str(whole.path), "--shard", "4/3")
    assert bad.returncode == 2 and "K must be 1 to N" in bad.stderr


def test_python_api_mounts_a_dataframe_of_series_from_a_threaded_process(s3_proxy, generated, tmp_path):
    import pandas as pd

    ct, mr = _ct(generated), next(s for s in generated if s.modality == "MR")
    cohort = pd.DataFrame({"SeriesInstanceUID": [ct.series_uid, mr.series_uid], "Modality": ["CT", "MR"]})
    busy = threading.Event()
    worker = threading.Thread(target=busy.wait, args=(60,))  # a notebook kernel has threads
    worker.start()
    options = {"endpoint_url": s3_proxy.url, "cache_dir": tmp_path / "cache", "block_size": TEST_BLOCK_SIZE}
    try:
        with idcfs.mount(tmp_path / "idc", series=cohort, log_file=tmp_path / "idcfs.log", **options) as idc:
            assert str(idc.mountpoint) in mounted_fuse_points()
            assert idc.path(ct.series_uid) == idc.mountpoint / ct.path
            assert idc.paths(ct.crdc_series_uuid) == [idc / ct.path]
            name = ct.files[0].name
            assert (idc.path(ct.series_uid) / name).read_bytes() == source_file(ct, name).read_bytes()
            assert idc.info["series"] == 2
            assert idc.stats()["requests"]["GET"] >= 1
            with pytest.raises(KeyError, match="not in the mount"):
                idc.path(next(s for s in generated if s.modality == "SR").series_uid)
            assert idcfs.Mount(idc.path(mr.series_uid)).mountpoint == idc.mountpoint  # any path in it
        assert str(tmp_path / "idc") not in mounted_fuse_points()  # the context unmounted it
        with pytest.raises(idcfs.MountError, match=r"--collection 'lung_pet_ct' is not in the index"):
            idcfs.mount(tmp_path / "bad", collection="lung_pet_ct", **options)
        with pytest.raises(TypeError, match=r"unknown option 'cache_sise' \(did you mean 'cache_size'\?\)"):
            idcfs.mount(tmp_path / "bad", cache_sise="1G")
        with pytest.raises(ValueError, match="needs a column crdc_series_uuid or SeriesInstanceUID"):
            idcfs.mount(tmp_path / "bad", series=pd.DataFrame({"uid": ["1.2"]}))
    finally:
        busy.set()
        worker.join()


def test_shard_of_is_the_sql_of_the_mount():
    import duckdb

    from idcfs.catalog.index import _shard_condition

    ids = ["LIDC-IDRI-0001", "C3L-00629", "", "Lung_Dx-A0002", "ÄÖ-1"]
    connection = duckdb.connect()
    for count in (1, 2, 3, 7):
        for part in range(1, count + 1):
            sql = f"SELECT PatientID FROM (SELECT unnest($1) AS PatientID) WHERE {_shard_condition((part, count))}"
            chosen = {row[0] for row in connection.execute(sql, [ids]).fetchall()}
            assert chosen == {p for p in ids if shard_of(p, count) == part}


def _modules_after(statement: str) -> set[str]:
    import subprocess
    import sys

    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_package_import_stays_light():
    """``import idcfs`` (which the daemon does before blocking SIGHUP) loads no API module, and
    the CLI (``idcfs --help``, the command that starts a mount) no module of the data path."""
    assert {m for m in _modules_after("import idcfs") if m.startswith(("idcfs.", "numpy"))} == {"idcfs.version"}
    assert Path(idcfs.__file__).name == "__init__.py"
    loaded = _modules_after("import idcfs.cli.main")
    heavy = ("numpy", "pyarrow", "duckdb", "urllib3", "mfusepy", "cachetools", "idcfs.vfs", "idcfs.catalog")
    assert not {m for m in loaded if m.startswith(heavy)}
    assert not {"idcfs.blocks.reader", "idcfs.blocks.cache", "idcfs.remote.http", "idcfs.remote.store"} & loaded


def test_example_notebook_runs_against_the_test_servers(s3_proxy, generated, tmp_path, monkeypatch):
    """scripts/idcfs_notebook.ipynb, executed in a real kernel (nbclient): pydicom through
    idc:// (what a Colab user runs), through a mount, then idc-index's sql_query result mounted
    with series=."""
    import nbclient
    import nbformat

    notebook = nbformat.read(Path(__file__).resolve().parent.parent / "scripts" / "idcfs_notebook.ipynb", as_version=4)
    for name, value in {
        "IDC_MOUNT": tmp_path / "idc",
        "IDCFS_ENDPOINT_URL": s3_proxy.url,
        "IDCFS_CACHE_DIR": tmp_path / "cache",
        "IDCFS_LOG_FILE": tmp_path / "idcfs.log",
    }.items():
        monkeypatch.setenv(name, str(value))
    try:
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute(cwd=str(tmp_path))
    finally:
        if str(tmp_path / "idc") in mounted_fuse_points():
            run_idcfs("umount", str(tmp_path / "idc"))
    text = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    ct = _ct(generated)
    assert f"CT {ct.series_uid}: {len(ct.files)} files through idc://" in text
    assert f"CT   {ct.series_uid}: {len(ct.files)} files, (256, 256)" in text
    assert "unmounted: True" in text


def test_a_mount_says_nothing_of_libfuse_internals(mount_factory, s3_proxy, tmp_path):
    """libfuse warned 'Ignoring invalid max threads value 4294967295' at every mount (mfusepy
    passed -1): the user sees neither that nor anything else from a mount that worked."""
    result, mountpoint, log_file = start_idcfs(tmp_path, s3_proxy.url, "--collection", "cptac_cm")
    try:
        assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
        assert "Ignoring invalid" not in log_file.read_text() and "max threads" not in log_file.read_text()
    finally:
        run_idcfs("umount", str(mountpoint))
