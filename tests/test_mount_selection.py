"""Selections, manifests, releases and metadata through real mounts of the bundled index."""

from __future__ import annotations

import json
import os

import pytest

from idcfs.service.mounting import mounted_fuse_points

from .conftest import requires_fuse, run_idcfs, source_file, start_idcfs

pytestmark = [pytest.mark.integration, requires_fuse]


def test_collection_and_modality_filters(mount_factory, s3_proxy, generated):
    mount = mount_factory(s3_proxy.url, "--collection", "lung_pet_ct_dx", "--modality", "CT")
    assert sorted(os.listdir(mount.path)) == [".idcfs", "lung_pet_ct_dx"]
    ct = next(s for s in generated if s.collection_id == "lung_pet_ct_dx" and s.modality == "CT")
    sr = next(s for s in generated if s.modality == "SR")
    assert (mount.series_dir(ct) / ct.files[0].name).read_bytes() == source_file(ct, ct.files[0].name).read_bytes()
    assert not mount.series_dir(sr).exists()  # the study's SR is filtered out
    version = json.loads((mount.path / ".idcfs" / "version").read_text())
    assert version["selection"] == {"collections": ["lung_pet_ct_dx"], "modalities": ["CT"]}


def test_manifest_mount_serves_exactly_its_series(mount_factory, s3_proxy, generated, tmp_path):
    wanted = [generated[0], generated[3]]
    lines = [f"cp s3://{s.aws_bucket}/{s.crdc_series_uuid}/* ./{s.modality}" for s in wanted]
    manifest = tmp_path / "manifest.s5cmd"
    manifest.write_text("# an IDC portal manifest\n" + "\n".join(lines) + "\n")
    mount = mount_factory(s3_proxy.url, "--manifest", str(manifest))
    assert sorted(os.listdir(mount.path)) == sorted([".idcfs", generated[0].collection_id, generated[3].collection_id])
    for series in wanted:
        assert sorted(os.listdir(mount.series_dir(series))) == [f.name for f in series.files]
    served = (mount.path / ".idcfs" / "manifest.txt").read_text().splitlines()
    assert sorted(served) == sorted(f"cp s3://{s.aws_bucket}/{s.crdc_series_uuid}/* ." for s in wanted)
    assert json.loads((mount.path / ".idcfs" / "version").read_text())["series"] == 2


def test_manifest_with_unknown_ids_refuses_or_mounts_the_rest(mount_factory, s3_proxy, generated, tmp_path):
    manifest = tmp_path / "ids.txt"
    manifest.write_text(f"{generated[1].crdc_series_uuid}\n00000000-0000-4000-8000-000000000000\n")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    refused = run_idcfs(
        "mount",
        str(mountpoint),
        "--endpoint-url",
        s3_proxy.url,
        "--manifest",
        str(manifest),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert refused.returncode != 0
    assert "line 2: 00000000-0000-4000-8000-000000000000" in refused.stderr and "--allow-missing" in refused.stderr
    assert str(mountpoint) not in mounted_fuse_points()
    mount = mount_factory(s3_proxy.url, "--manifest", str(manifest), "--allow-missing")
    assert os.listdir(mount.series_dir(generated[1])) == [generated[1].files[0].name]
    assert "match no IDC series" in mount.log()


def test_bad_where_is_a_clear_error(tmp_path, s3_proxy):
    result, mountpoint, _ = start_idcfs(tmp_path, s3_proxy.url, "--where", "Modality = ")
    assert result.returncode != 0 and "cannot apply --where" in result.stderr
    assert "Traceback" not in result.stderr


def test_xattrs_on_every_level(mount_factory, s3_proxy, generated):
    mount = mount_factory(s3_proxy.url, "--collection", "cptac_cm")
    mr = next(s for s in generated if s.collection_id == "cptac_cm")
    series = mount.series_dir(mr)
    study, patient, collection = series.parent, series.parent.parent, series.parent.parent.parent

    def attrs(path):
        return {name.removeprefix("user.idc."): os.getxattr(path, name).decode() for name in os.listxattr(path)}

    assert attrs(collection)["collection_id"] == "cptac_cm"
    assert attrs(patient)["patient_id"] == mr.patient_id
    assert attrs(study)["study_instance_uid"] == mr.study_uid
    assert int(attrs(collection)["series_count"]) >= int(attrs(patient)["series_count"]) >= 1
    on_series = attrs(series)
    assert on_series["series_instance_uid"] == mr.series_uid
    assert on_series["modality"] == "MR"
    assert on_series["crdc_series_uuid"] == mr.crdc_series_uuid
    assert on_series["url"] == f"s3://idc-open-data-two/{mr.crdc_series_uuid}/*"
    assert on_series["idc_versions"].split("-")[0].isdigit()
    assert float(on_series["series_size_mb"]) > 0 and int(on_series["instance_count"]) > 0
    latest = max(int(line.split()[0]) for line in run_idcfs("versions").stdout.splitlines()[1:])
    assert int(attrs(mount.path)["idc_version"]) == latest


def test_warm_mount_reuses_the_catalog_snapshot(mount_factory, s3_proxy, tmp_path, generated):
    cache = tmp_path / "shared-cache"
    own = ("--cache-dir", str(cache), "--catalog-dir", str(cache / "catalogs"))  # not the session's shared one
    first = mount_factory(s3_proxy.url, "--collection", "midrc_ricord_1b", *own)
    assert "built in" in first.log()
    second = mount_factory(s3_proxy.url, "--collection", "midrc_ricord_1b", *own)
    assert "loaded from" in second.log()
    assert sorted(os.listdir(first.path)) == sorted(os.listdir(second.path))
    series = next(s for s in generated if s.collection_id == "midrc_ricord_1b")
    assert len(os.listdir(second.series_dir(series))) == len(series.files)


def test_release_mount_matches_the_versions_table(mount_factory, s3_proxy):
    table = run_idcfs("versions")
    assert table.returncode == 0
    counts = {int(line.split()[0]): int(line.split()[2].replace(",", "")) for line in table.stdout.splitlines()[1:]}
    assert counts[max(counts)] > counts[18] > counts[2] > 0
    mount = mount_factory(s3_proxy.url, "--idc-version", "18")
    assert int(os.getxattr(mount.path, "user.idc.series_count")) == counts[18]
    assert int(os.getxattr(mount.path, "user.idc.idc_version")) == 18
    assert json.loads((mount.path / ".idcfs" / "version").read_text())["idc_version"] == 18
