"""--volumes on every face, read by real readers: nibabel and SimpleITK find in each volume the
array and affine that dcm2niix makes of a local copy of the series (through the FUSE mount,
idc:// and the WebDAV share), and a SEG's label map lies on its image volume's grid."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import fsspec
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import Mount, run_idcfs, source_file
from tests.test_webdav import Share, start_serve, stop_serve, url_of
from tests.testbed.dicomgen import GeneratedSeries

pytestmark = pytest.mark.integration


def volume_series(generated: list[GeneratedSeries]) -> list[GeneratedSeries]:
    return [s for s in generated if s.modality in ("CT", "MR")]


def base_of(series: GeneratedSeries) -> str:
    return series.path.rsplit("/", 1)[1]


def volume_path(series: GeneratedSeries) -> str:
    return f"{series.path}.nifti/{base_of(series)}.nii.gz"


@pytest.fixture(scope="module")
def local_volumes(generated, tmp_path_factory) -> dict[str, Path]:
    """dcm2niix run on a local copy of each series (its defaults but no compression)."""
    import dcm2niix

    made = {}
    for series in volume_series(generated):
        folder = tmp_path_factory.mktemp("local")
        (folder / "in").mkdir()
        for file in series.files:
            shutil.copy(source_file(series, file.name), folder / "in" / file.name)
        command = [dcm2niix.bin, "-z", "n", "-f", "local", "-o", str(folder), str(folder / "in")]
        subprocess.run(command, check=True, capture_output=True)
        made[series.crdc_series_uuid] = folder / "local.nii"
    return made


def same_as_local(image: nib.Nifti1Image, local: Path) -> None:
    expected = nib.load(local)
    assert image.shape == expected.shape
    assert np.array_equal(image.affine, expected.affine)
    assert np.array_equal(np.asarray(image.dataobj), np.asarray(expected.dataobj))


def same_in_itk(path: Path, local: Path) -> None:
    ours, theirs = sitk.ReadImage(str(path)), sitk.ReadImage(str(local))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    assert ours.GetOrigin() == theirs.GetOrigin()
    assert ours.GetSpacing() == theirs.GetSpacing()
    assert ours.GetDirection() == theirs.GetDirection()


@pytest.fixture(scope="module")
def volumes_mount(generated, s3_proxy, tmp_path_factory) -> Iterator[Mount]:
    from tests.conftest import mount_idcfs

    collections = sorted({s.collection_id for s in generated})
    mount = mount_idcfs(
        tmp_path_factory.mktemp("volumes-mount"), s3_proxy.url, "--volumes", *(f"--collection={c}" for c in collections)
    )
    yield mount
    subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], check=False)


def test_through_the_mount_nibabel_and_simpleitk_read_what_dcm2niix_makes(volumes_mount, generated, local_volumes):
    for series in volume_series(generated):
        study = volumes_mount.path / series.path.rsplit("/", 1)[0]
        assert f"{base_of(series)}.nifti" in {p.name for p in study.iterdir()}
        path = volumes_mount.path / volume_path(series)
        local = local_volumes[series.crdc_series_uuid]
        same_as_local(nib.load(path), local)
        same_in_itk(path, local)
        sidecar = path.with_name(f"{base_of(series)}.json")
        assert sidecar.read_bytes() == local.with_suffix(".json").read_bytes()
    shown = run_idcfs("stats", str(volumes_mount.path))
    assert shown.returncode == 0, shown.stderr
    assert f"built {len(volume_series(generated))}" in shown.stdout and "none building" in shown.stdout


def test_a_write_into_a_nifti_folder_is_refused(volumes_mount, generated):
    import errno

    series = volume_series(generated)[0]
    with pytest.raises(OSError) as refused:
        (volumes_mount.path / f"{series.path}.nifti" / "new.nii").write_bytes(b"x")
    assert refused.value.errno == errno.EROFS


@pytest.fixture(scope="module")
def volumes_idc(generated, s3_proxy, tmp_path_factory):
    fs = fsspec.filesystem(
        "idc",
        skip_instance_cache=True,
        endpoint_url=s3_proxy.url,
        cache_dir=tmp_path_factory.mktemp("volumes-idc"),
        collection=sorted({s.collection_id for s in generated}),
        volumes=True,
    )
    yield fs
    fs.vfs.close()


def test_through_idc_nibabel_reads_what_dcm2niix_makes(volumes_idc, generated, local_volumes):
    for series in volume_series(generated):
        listed = volumes_idc.ls(f"idc://{series.path}.nifti", detail=True)
        sizes = {entry["name"].rsplit("/", 1)[1]: entry["size"] for entry in listed}
        with volumes_idc.open(f"idc://{volume_path(series)}", "rb") as opened:
            data = opened.read()
        assert len(data) == sizes[f"{base_of(series)}.nii.gz"]
        same_as_local(nib.Nifti1Image.from_bytes(gzip.decompress(data)), local_volumes[series.crdc_series_uuid])


@pytest.fixture(scope="module")
def volumes_share(generated, s3_proxy, tmp_path_factory) -> Iterator[Share]:
    collections = sorted({s.collection_id for s in generated})
    served = start_serve(
        tmp_path_factory.mktemp("volumes-serve"), s3_proxy.url, "--volumes", *(f"--collection={c}" for c in collections)
    )
    yield served
    stop_serve(served)


def test_through_the_share_a_volume_reads_as_dcm2niix_makes_it(volumes_share, generated, local_volumes, tmp_path):
    for series in volume_series(generated):
        study = series.path.rsplit("/", 1)[0]
        status, _, body = volumes_share.request("PROPFIND", url_of(study) + "/", {"Depth": "1"})
        assert status == 207 and f"{base_of(series)}.nifti/" in body.decode()
        status, headers, body = volumes_share.request("GET", url_of(volume_path(series)))
        assert status == 200
        path = tmp_path / f"{series.crdc_series_uuid}.nii.gz"
        path.write_bytes(body)
        local = local_volumes[series.crdc_series_uuid]
        same_as_local(nib.load(path), local)
        same_in_itk(path, local)
        status, _, _ = volumes_share.request("PUT", url_of(f"{series.path}.nifti/new.nii"), body=b"x")
        assert status in (403, 405)


def test_a_prefetch_of_a_study_reads_its_dicom_and_builds_no_volume(volumes_idc, generated, volumes_mount):
    series = volume_series(generated)[0]
    study = series.path.rsplit("/", 1)[0]
    built = volumes_idc.vfs.stats()["volumes"]
    result = volumes_idc.prefetch(f"idc://{study}", progress=False)
    assert not result.failures
    assert volumes_idc.vfs.stats()["volumes"] == built  # no .nifti folder was listed
    assert result.files == sum(len(s.files) for s in generated if s.path.rsplit("/", 1)[0] == study)
    import json

    def mount_volumes() -> dict:
        return json.loads((volumes_mount.path / ".idcfs" / "stats").read_text())["volumes"]

    before = mount_volumes()
    shown = run_idcfs("prefetch", str(volumes_mount.path / study))
    assert shown.returncode == 0, shown.stderr
    assert mount_volumes() == before
