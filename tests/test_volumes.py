"""--volumes in the core: which series get a .nifti folder, what it holds, built once, the
same bytes in two cache folders, and what a failure leaves (the tree in-process, against the
local S3 server; the faces' tests read the volumes with nibabel and SimpleITK)."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from idcfs.vfs.vfs import Vfs
from tests.test_vfs import open_vfs, read_all
from tests.testbed.dicomgen import GeneratedSeries

pytestmark = pytest.mark.integration


def ct(generated: list[GeneratedSeries]) -> GeneratedSeries:
    return next(s for s in generated if s.modality == "CT" and s.aws_bucket == "idc-open-data")


@pytest.fixture(scope="module")
def volumes_vfs(generated, s3_proxy, tmp_path_factory) -> Iterator[Vfs]:
    tree = open_vfs(
        tmp_path_factory.mktemp("volumes"),
        s3_proxy.url,
        sorted({s.collection_id for s in generated}),
        prefetch="off",
        volumes=True,
    )
    yield tree
    tree.close()


def test_a_study_folder_shows_a_nifti_folder_beside_each_image_series_without_a_request(
    volumes_vfs, generated, s3_proxy
):
    series = ct(generated)
    study = series.path.rsplit("/", 1)[0]
    s3_proxy.settle()
    s3_proxy.log.clear()
    names = dict(volumes_vfs.list(study))
    folder = series.path.rsplit("/", 1)[1]
    assert names[folder] is True and names[folder + ".nifti"] is True
    sr = next(s for s in generated if s.modality == "SR" and s.study_uid == series.study_uid)
    assert sr.path.rsplit("/", 1)[1] + ".nifti" not in names  # a report is no volume
    assert volumes_vfs.stat(series.path + ".nifti").is_dir
    assert s3_proxy.log.requests == []


def test_a_series_volume_is_what_dcm2niix_makes_of_a_local_copy(volumes_vfs, generated, tmp_path):
    import dcm2niix

    series = ct(generated)
    base = series.path.rsplit("/", 1)[1]
    listed = dict((name, size) for name, _, size in volumes_vfs.list_sized(series.path + ".nifti"))
    assert set(listed) == {f"{base}.nii.gz", f"{base}.json"}
    volume = read_all(volumes_vfs, f"{series.path}.nifti/{base}.nii.gz")
    assert len(volume) == listed[f"{base}.nii.gz"]
    local = tmp_path / "in"
    local.mkdir()
    for file in series.files:
        (local / file.name).write_bytes(read_all(volumes_vfs, f"{series.path}/{file.name}"))
    subprocess.run([dcm2niix.bin, "-z", "n", "-f", "x", "-o", str(tmp_path), str(local)], check=True, capture_output=True)
    assert gzip.decompress(volume) == (tmp_path / "x.nii").read_bytes()
