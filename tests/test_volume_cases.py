"""The hard cases of --volumes (tests/testbed/volumegen.py), through the tree in-process and a
SEG's label map through the mount: what each series becomes, with the voxels checked."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import nibabel as nib
import numpy as np
import pytest

from idcfs.vfs.vfs import Vfs
from tests.test_vfs import open_vfs, read_all
from tests.testbed.dicomgen import GeneratedSeries
from tests.testbed.volumegen import SEG_SEGMENTS, seg_image_affine, seg_masks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cases_vfs(volume_cases, s3_proxy, tmp_path_factory) -> Iterator[Vfs]:
    collections = sorted({s.collection_id for s in volume_cases.values()})
    tree = open_vfs(tmp_path_factory.mktemp("cases"), s3_proxy.url, collections, prefetch="off", volumes=True)
    yield tree
    tree.close()


def base_of(series: GeneratedSeries) -> str:
    return series.path.rsplit("/", 1)[1]


def listed(vfs: Vfs, series: GeneratedSeries) -> dict[str, int]:
    """The .nifti folder's files, by the suffix after the series folder's name."""
    return {name[len(base_of(series)) :]: size for name, _, size in vfs.list_sized(f"{series.path}.nifti")}


def volume(vfs: Vfs, series: GeneratedSeries, suffix: str = "") -> nib.Nifti1Image:
    data = read_all(vfs, f"{series.path}.nifti/{base_of(series)}{suffix}.nii.gz")
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


@pytest.mark.parametrize(
    ("case", "suffixes"),
    [
        ("tilt", {".nii.gz", ".json", "_Tilt_1.nii.gz"}),
        ("two_orientations", {"_i00001.nii.gz", "_i00001.json", "_i00009.nii.gz", "_i00009.json"}),
        ("multi_echo", {"_e1.nii.gz", "_e1.json", "_e2.nii.gz", "_e2.json"}),
        ("enhanced_ct", {".nii.gz", ".json"}),
    ],
)
def test_a_series_of_several_volumes_or_one_multiframe_object_gives_what_dcm2niix_gives(
    cases_vfs, volume_cases, case, suffixes
):
    series = volume_cases[case]
    files = listed(cases_vfs, series)
    assert set(files) == suffixes
    for suffix in (s for s in suffixes if s.endswith(".nii.gz")):
        image = volume(cases_vfs, series, suffix.removesuffix(".nii.gz"))
        assert image.shape[0] == 64 and np.asarray(image.dataobj).any()
    if case == "tilt":
        assert volume(cases_vfs, series, "_Tilt_1").shape == (64, 71, 12)  # corrected: the grid grows
    if case == "enhanced_ct":
        image = volume(cases_vfs, series)
        assert image.shape == (64, 64, 10) and np.allclose(image.header.get_zooms(), (3, 3, 5))


def test_a_series_dcm2niix_cannot_convert_holds_only_its_reason_and_nothing_partial(cases_vfs, volume_cases):
    series = volume_cases["unconvertible"]
    names = [name for name, _ in cases_vfs.list(f"{series.path}.nifti")]
    assert names == ["conversion-error.txt"]
    reason = read_all(cases_vfs, f"{series.path}.nifti/conversion-error.txt").decode()
    assert "exit status 2" in reason and "No valid DICOM" in reason
    assert "/tmp" not in reason and "cache" not in reason  # no machine paths: the same text everywhere
    assert cases_vfs.stats()["volumes"]["not_convertible"] >= 1


def expected_on_grid(image: nib.Nifti1Image) -> dict[int, np.ndarray]:
    """Each segment's mask (as generated, on the CT's slices) carried onto the NIfTI grid through
    the affines: the voxel whose centre is at the same patient position."""
    shape = image.shape[:3]
    voxels = np.indices(shape).reshape(3, -1)
    ras = image.affine @ np.vstack([voxels, np.ones(voxels.shape[1])])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    indices = np.rint(np.linalg.inv(seg_image_affine()) @ lps)[:3].astype(int)  # (slice, row, column)
    masks = seg_masks()
    return {number: mask[tuple(indices)].reshape(shape) for number, mask in masks.items()}


def test_a_seg_is_a_label_map_on_its_image_volumes_exact_grid(cases_vfs, volume_cases):
    image = volume(cases_vfs, volume_cases["seg_image"])
    seg = volume_cases["seg"]
    assert set(listed(cases_vfs, seg)) == {".nii.gz", ".json", "_segments.nii.gz"}  # 1 and 2 overlap
    labels = volume(cases_vfs, seg)
    assert labels.shape == image.shape
    assert np.array_equal(labels.affine, image.affine)
    assert np.array_equal(labels.header.get_qform(), image.header.get_qform())
    expected = expected_on_grid(image)
    values = np.asarray(labels.dataobj)
    assert values.dtype == np.uint8
    wanted = np.zeros(image.shape, dtype=np.uint8)
    for number in sorted(expected):  # the highest segment number where segments overlap
        wanted[expected[number]] = number
    assert np.array_equal(values, wanted)
    assert (values == 2).sum() == expected[2].sum()  # the tumor whole, over the liver
    segments = np.asarray(volume(cases_vfs, seg, "_segments").dataobj)
    assert segments.shape == (*image.shape, len(expected))
    for k, number in enumerate(sorted(expected)):
        assert np.array_equal(segments[..., k] > 0, expected[number])
    sidecar = json.loads(read_all(cases_vfs, f"{seg.path}.nifti/{base_of(seg)}.json"))
    assert sidecar["Overlapping"] is True
    assert sidecar["ImageVolume"] == f"{base_of(volume_cases['seg_image'])}.nii.gz"
    assert sidecar["ImageSeries"] == base_of(volume_cases["seg_image"])
    assert [s["Value"] for s in sidecar["Segments"]] == sorted(expected)
    assert [s["Voxels"] for s in sidecar["Segments"]] == [int(expected[n].sum()) for n in sorted(expected)]
    for described in sidecar["Segments"]:
        label, category, kind = SEG_SEGMENTS[described["Value"]]
        assert described["SegmentLabel"] == label
        assert described["SegmentedPropertyCategory"]["CodeValue"] == category[0]
        assert described["SegmentedPropertyType"]["CodeValue"] == kind[0]


def test_through_the_mount_simpleitk_puts_the_label_map_on_the_image(volume_cases, s3_proxy, mount_factory, tmp_path):
    import SimpleITK as sitk

    collection = volume_cases["seg"].collection_id
    mount = mount_factory(s3_proxy.url, "--volumes", f"--collection={collection}")
    image_path = mount.path / f"{volume_cases['seg_image'].path}.nifti/{base_of(volume_cases['seg_image'])}.nii.gz"
    labels_path = mount.path / f"{volume_cases['seg'].path}.nifti/{base_of(volume_cases['seg'])}.nii.gz"
    image, labels = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(labels_path))
    assert labels.GetSize() == image.GetSize()
    assert labels.GetOrigin() == image.GetOrigin()
    assert labels.GetSpacing() == image.GetSpacing()
    assert labels.GetDirection() == image.GetDirection()
    # README's nnU-Net dataset of symlinks, made as it says: each SEG's label map and its image.
    dataset = tmp_path / "Dataset501"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    study = mount.path / volume_cases["seg"].path.rsplit("/", 1)[0]  # (the README globs the whole mount)
    for k, seg in enumerate(sorted(study.glob("SEG_*.nifti"))):
        made = seg / (seg.name.removesuffix(".nifti") + ".nii.gz")
        if not made.exists():
            continue  # not convertible (the collection's other SEGs have no objects here)
        made_on = json.loads(made.with_suffix("").with_suffix(".json").read_text())
        ct = seg.parent / (made_on["ImageSeries"] + ".nifti") / made_on["ImageVolume"]
        (dataset / "imagesTr" / f"case_{k:03d}_0000.nii.gz").symlink_to(ct)
        (dataset / "labelsTr" / f"case_{k:03d}.nii.gz").symlink_to(made)
    pairs = [
        (nib.load(i), nib.load(dataset / "labelsTr" / i.name.replace("_0000", "")))
        for i in (dataset / "imagesTr").iterdir()
    ]
    assert pairs and all(a.shape == b.shape and np.array_equal(a.affine, b.affine) for a, b in pairs)
    counts = np.bincount(sitk.GetArrayFromImage(labels).ravel(), minlength=4)
    masks = seg_masks()
    assert counts[2] == masks[2].sum() and counts[3] == masks[3].sum()
    assert counts[1] == (masks[1] & ~masks[2] & ~masks[3]).sum()


def test_builds_asked_for_at_once_take_turns(volume_cases, s3_proxy, tmp_path):
    import threading

    from idcfs.derived.volumes import BUILDS_AT_ONCE

    cases = [volume_cases[k] for k in ("tilt", "two_orientations", "multi_echo", "enhanced_ct", "seg_image")]
    collections = sorted({s.collection_id for s in cases})
    tree = open_vfs(tmp_path, s3_proxy.url, collections, prefetch="off", volumes=True)
    most, done = 0, threading.Event()

    def sample() -> None:
        nonlocal most
        while not done.wait(0.005):
            most = max(most, len(tree.stats()["volumes"]["building"]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        threads = [threading.Thread(target=tree.list, args=(f"{s.path}.nifti",)) for s in cases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        stats = tree.stats()["volumes"]
        assert (stats["built"], stats["waiting"], stats["building"]) == (len(cases), 0, [])
        assert 1 <= most <= BUILDS_AT_ONCE
    finally:
        done.set()
        sampler.join()
        tree.close()
