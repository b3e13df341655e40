"""The hard cases of ``--volumes``: series that dcm2niix turns into more than one volume, or none,
and a DICOM SEG to put on the grid of its image series.

Each case is a small synthetic series written at the real bucket path of a real series of the
bundled index whose Modality matches (as dicomgen does), so the mounted tree shows it where the
real one would be:

- ``tilt``: a CT acquired with gantry tilt (slices sheared): dcm2niix writes the volume and a
  ``_Tilt_1`` corrected one.
- ``two_orientations``: a CT series holding an axial and a coronal stack: two volumes.
- ``multi_echo``: a dual-echo MR (same positions, EchoNumbers 1 and 2): one volume per echo.
- ``enhanced_ct``: one Enhanced CT Image object (multi-frame, functional groups): one volume.
- ``seg_image`` and ``seg``: a CT and a DICOM SEG of the same real study, the SEG made with
  highdicom from the CT's datasets: BINARY, three segments, segments 1 and 2 overlapping, empty
  frames left out. ``seg_masks()`` gives the voxels of each segment on the CT's grid.
- ``unconvertible``: CT instances without pixel data: dcm2niix fails and writes no volume.

The phantom is a sphere with a small off-centre block (so a flipped axis shows), sampled at each
pixel's patient position: every stack of a series, whatever its orientation, images one object.
Content is deterministic: the same call always writes the same bytes (highdicom's clock-set and
random attributes are overwritten with fixed ones).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tests.testbed.dicomgen import (
    GeneratedFile,
    GeneratedSeries,
    _base_dataset,
    _deterministic_uuid,
    _uid,
    index_rows,
    save_object,
    series_from_row,
)

#: acrin_nsclc_fdg_pet, ACRIN-NSCLC-FDG-PET-225, CT "ROUTINE BRAIN" (idc-open-data-two): gantry tilt.
TILT_SERIES = "44cb7ff4-640b-4c0c-b92b-6eb8265679c0"
#: cptac_ccrcc, C3N-02015, CT "<MPR Range>" (idc-open-data): an axial and a coronal stack.
TWO_ORIENTATIONS_SERIES = "8b63ca71-f7b3-4562-bd51-3ef04b383e90"
#: tcga_kirc, TCGA-BP-4787, MR "AXIAL FSPGR DUAL ECHO" (idc-open-data): two echoes.
MULTI_ECHO_SERIES = "ec77d5c2-e49f-4576-9f16-ba0d5e5db8ba"
#: tcga_ov, TCGA-25-2409, CT "BB images 3.0 B40f" (idc-open-data): one Enhanced CT object.
ENHANCED_CT_SERIES = "cb5ae0b5-e899-439d-94e8-376ac7466500"
#: colorectal_liver_metastases, CRLM-CT-1085, a CT (idc-open-data): the SEG's source images.
SEG_IMAGE_SERIES = "dffb90f4-6ac4-4f32-936d-5972471874f7"
#: colorectal_liver_metastases, CRLM-CT-1085, SEG "Segmentation" (idc-open-data): same study.
SEG_SERIES = "d9229c81-ec59-47e7-ac50-1705a8cf919e"
#: tcga_ov, TCGA-09-2044, CT "ABD/PELVIS  SCOUT" (idc-open-data): instances without pixel data.
UNCONVERTIBLE_SERIES = "c7234829-a7dc-4997-be60-979e426bfa28"

VOLUME_SERIES = {
    "tilt": TILT_SERIES,
    "two_orientations": TWO_ORIENTATIONS_SERIES,
    "multi_echo": MULTI_ECHO_SERIES,
    "enhanced_ct": ENHANCED_CT_SERIES,
    "seg_image": SEG_IMAGE_SERIES,
    "seg": SEG_SERIES,
    "unconvertible": UNCONVERTIBLE_SERIES,
}

#: Enhanced CT Image Storage, and the classic CT and MR Image Storage.
ENHANCED_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2.1"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"

#: Every case's images: SIZE x SIZE pixels of SPACING mm (a 192 mm field of view centred on the
#: patient's origin), slices STEP mm apart.
SIZE = 64
SPACING = 3.0
STEP = 5.0
#: The tilt case's gantry tilt, in degrees.
TILT_DEGREES = 20.0
#: The SEG's source CT: SEG_SLICES axial slices.
SEG_SLICES = 12
#: The SEG's segments: number -> (label, category, type) as (value, scheme, meaning).
SEG_SEGMENTS = {
    1: ("Liver", ("91772007", "SCT", "Organ"), ("10200004", "SCT", "Liver")),
    2: ("Tumor", ("49755003", "SCT", "Morphologically Abnormal Structure"), ("108369006", "SCT", "Neoplasm")),
    3: ("Portal vein", ("91723000", "SCT", "Anatomical Structure"), ("32764006", "SCT", "Portal vein")),
}
#: Fixed date and time for what highdicom would take from the clock.
_DATE, _TIME = "20000101", "120000"
_HALF = (SIZE - 1) / 2 * SPACING  # from the first pixel's centre to the image's centre


def generate_volume_cases(out_dir: str | os.PathLike[str], index_file: str | None = None) -> dict[str, GeneratedSeries]:
    """Write every case under ``out_dir/s3/<aws bucket>/<uuid>/`` and ``out_dir/gcs/...`` (hard
    links; each case's folders are emptied first), once: ``volumes.json`` records what was
    written, and a second call with the same stamp reuses it. Keys: see VOLUME_SERIES."""
    import highdicom
    import pydicom

    out = Path(out_dir)
    stamp = {"series": VOLUME_SERIES, "size": SIZE, "highdicom": highdicom.__version__,
             "pydicom": pydicom.__version__, "v": 1}  # fmt: skip
    record = out / "volumes.json"
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("stamp") == stamp:
            return {key: _series_from_json(data) for key, data in saved["cases"].items()}
    rows = dict(zip(VOLUME_SERIES, index_rows(list(VOLUME_SERIES.values()), index_file), strict=True))
    for key, row in rows.items():
        expected = "SEG" if key == "seg" else "MR" if key == "multi_echo" else "CT"
        if row["Modality"] != expected:
            raise ValueError(f"{key}: {row['crdc_series_uuid']} is {row['Modality']}, not {expected}")
    cases: dict[str, GeneratedSeries] = {}
    for key, row in rows.items():
        series = series_from_row(row)
        for cloud, bucket in (("s3", series.aws_bucket), ("gcs", series.gcs_bucket)):
            shutil.rmtree(out / cloud / bucket / series.crdc_series_uuid, ignore_errors=True)
        cases[key] = series
    for key, datasets in (
        ("tilt", _tilt(rows["tilt"])),
        ("two_orientations", _two_orientations(rows["two_orientations"])),
        ("multi_echo", _multi_echo(rows["multi_echo"])),
        ("enhanced_ct", [_enhanced_ct(rows["enhanced_ct"])]),
        ("unconvertible", _unconvertible(rows["unconvertible"])),
    ):
        _save(out, cases[key], datasets)
    images = _seg_image(rows["seg_image"])
    _save(out, cases["seg_image"], images)
    _save(out, cases["seg"], [_segmentation(rows["seg"], images)])
    record.write_text(json.dumps({"stamp": stamp, "cases": {k: asdict(s) for k, s in cases.items()}}, indent=1))
    return cases


def seg_masks() -> dict[int, np.ndarray]:
    """The voxels of each segment of the ``seg`` case: segment number -> a boolean array of
    (slices, rows, columns) on the grid of ``seg_image``, its slices in the order of the
    instances sorted by position (z ascending: InstanceNumber 1 first). Segments 1 and 2 overlap;
    slices no segment covers (the first two and the last two) are frames the SEG leaves out."""
    k, r, c = np.meshgrid(np.arange(SEG_SLICES), np.arange(SIZE), np.arange(SIZE), indexing="ij")
    liver = (k >= 2) & (k <= 8) & ((r - 30) ** 2 + (c - 26) ** 2 <= 15**2)
    tumor = (k >= 6) & (k <= 9) & (r >= 36) & (r < 50) & (c >= 34) & (c < 46)  # its corner is in the liver
    portal = (k >= 3) & (k <= 4) & (r >= 10) & (r < 14) & (c >= 40) & (c < 56)
    return {1: liver, 2: tumor, 3: portal}


def seg_label_map() -> np.ndarray:
    """``seg_masks()`` as one label map (0 background): where segments overlap, the highest
    segment number wins (segment 2 over 1)."""
    labels = np.zeros((SEG_SLICES, SIZE, SIZE), dtype=np.uint8)
    for number, mask in sorted(seg_masks().items()):
        labels[mask] = number
    return labels


def seg_image_affine() -> np.ndarray:
    """The 4x4 matrix from a voxel index (slice, row, column, 1) of ``seg_masks()`` to the
    patient's coordinates in mm (DICOM's LPS: x to the patient's left, y to the back, z up). A
    NIfTI's affine maps to RAS: negate its first two rows to compare."""
    z0 = -(SEG_SLICES - 1) / 2 * STEP
    return np.array(
        [[0.0, 0.0, SPACING, -_HALF], [0.0, SPACING, 0.0, -_HALF], [STEP, 0.0, 0.0, z0], [0.0, 0.0, 0.0, 1.0]]
    )


def _series_from_json(data: dict) -> GeneratedSeries:
    files = [GeneratedFile(**f) for f in data["files"]]
    return GeneratedSeries(**{k: v for k, v in data.items() if k != "files"}, files=files)


def _save(out: Path, series: GeneratedSeries, datasets: list) -> None:
    for number, dataset in enumerate(datasets, start=1):
        save_object(out, series, _deterministic_uuid(series.crdc_series_uuid, number) + ".dcm", dataset)
    series.files.sort(key=lambda f: f.name)


def _phantom(position, orientation, inside: int, background: int, seed: int) -> np.ndarray:
    """One slice of the phantom (int16 stored values): a 60 mm sphere at the origin holding a
    brighter block at (+40, +10, +8) mm (inside every case's stack, and off-centre along each
    axis, so a flipped axis shows), sampled where each pixel's centre is; noise below 20."""
    row_dir, col_dir = np.array(orientation[:3], dtype=float), np.array(orientation[3:], dtype=float)
    r = np.arange(SIZE, dtype=float)[:, None, None]
    c = np.arange(SIZE, dtype=float)[None, :, None]
    points = np.array(position, dtype=float) + c * SPACING * row_dir + r * SPACING * col_dir
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    sphere = x * x + y * y + z * z <= 60.0**2
    block = (np.abs(x - 40) <= 10) & (np.abs(y - 10) <= 7) & (np.abs(z - 8) <= 7)
    values = np.where(sphere, inside, background) + np.where(block, (inside - background) // 2, 0)
    noise = np.random.default_rng(seed).integers(0, 20, (SIZE, SIZE))
    return (values + noise).astype(np.int16)


def _round(values) -> list[float]:
    """Geometry as DS values: rounded so the text form stays short and exact."""
    return [round(float(v), 6) + 0.0 for v in values]


def _slice(row: dict, number: int, position, orientation, sop_class: str = CT_SOP_CLASS):
    """A single-frame CT (or MR) image of the phantom at ``position`` and ``orientation``."""
    ds = _base_dataset(row, sop_class, number)
    series_uuid = row["crdc_series_uuid"]
    ds.PatientName = row["PatientID"] + "^"  # one component, unambiguously (highdicom warns otherwise)
    ds.PatientBirthDate = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ContentDate, ds.ContentTime = ds.StudyDate, _TIME
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = _uid(series_uuid, "frame")
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = _round(position)
    ds.ImageOrientationPatient = _round(orientation)
    ds.PixelSpacing = [SPACING, SPACING]
    ds.SliceThickness = STEP
    normal = np.cross(orientation[:3], orientation[3:])
    ds.SliceLocation = round(float(np.dot(normal, position)), 6) + 0.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if sop_class == MR_SOP_CLASS:
        inside, background = 800, 0
    else:
        ds.KVP = 120
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        inside, background = 1064, 0  # +40 HU in air
    pixels = _phantom(ds.ImagePositionPatient, ds.ImageOrientationPatient, inside, background, seed=number)
    ds.PixelData = pixels.tobytes()
    return ds


def _axial(z: float) -> tuple[list[float], list[float]]:
    return [-_HALF, -_HALF, z], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _tilt(row: dict) -> list:
    """12 axial slices of a gantry tilted by TILT_DEGREES: each image plane is turned about the
    patient's x axis, while the table moves along z only: every slice's centre is on the z axis,
    5 mm from the next, so the stack is sheared (its slice normal is not the direction from one
    slice to the next). GantryDetectorTilt agrees with the orientation (dcm2niix checks)."""
    angle = math.radians(TILT_DEGREES)
    orientation = [1.0, 0.0, 0.0, 0.0, math.cos(angle), -math.sin(angle)]
    datasets = []
    for k in range(12):
        z = (k - 5.5) * STEP
        position = [-_HALF, -_HALF * math.cos(angle), z + _HALF * math.sin(angle)]
        ds = _slice(row, k + 1, position, orientation)
        ds.GantryDetectorTilt = TILT_DEGREES
        datasets.append(ds)
    return datasets


def _two_orientations(row: dict) -> list:
    """8 axial slices (instances 1-8) then 8 coronal ones (9-16) of the same phantom, as a
    scanner's MPR series holds: same series, same frame of reference, same image type."""
    datasets = []
    for k in range(8):
        position, orientation = _axial((k - 3.5) * STEP)
        ds = _slice(row, k + 1, position, orientation)
        ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
        datasets.append(ds)
    coronal = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    for k in range(8):
        ds = _slice(row, k + 9, [-_HALF, (k - 3.5) * STEP, _HALF], coronal)
        ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
        datasets.append(ds)
    return datasets


def _multi_echo(row: dict) -> list:
    """A dual-echo gradient echo MR: 8 axial slices, each at EchoNumbers 1 and 2 (TE 2.3 and 4.6
    ms), instances interleaved (slice 1 echo 1, slice 1 echo 2, ...)."""
    datasets = []
    for k in range(8):
        for echo, echo_time in ((1, 2.3), (2, 4.6)):
            number = 2 * k + echo
            position, orientation = _axial((k - 3.5) * STEP)
            ds = _slice(row, number, position, orientation, MR_SOP_CLASS)
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime, ds.EchoTime, ds.EchoNumbers, ds.EchoTrainLength = 150.0, echo_time, echo, 1
            ds.FlipAngle, ds.MagneticFieldStrength, ds.ImagingFrequency = 70.0, 1.5, 63.86
            ds.ImagedNucleus = "1H"
            ds.AcquisitionNumber = 1
            if echo == 2:  # T2* decay: a darker second echo
                pixels = np.frombuffer(ds.PixelData, dtype=np.int16)
                ds.PixelData = (pixels * 3 // 4).astype(np.int16).tobytes()
            datasets.append(ds)
    return datasets


def _enhanced_ct(row: dict):
    """One Enhanced CT Image object: 10 axial frames, pixel measures, orientation and the HU
    rescale shared, each frame's position (and its place in the stack) per frame."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    series_uuid = row["crdc_series_uuid"]
    frames = 10
    ds = _base_dataset(row, ENHANCED_CT_SOP_CLASS, 1)
    ds.PatientName = row["PatientID"] + "^"  # one component, unambiguously (highdicom warns otherwise)
    ds.PatientBirthDate = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.ContentDate, ds.ContentTime = ds.StudyDate, _TIME
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = ds.StudyDate + _TIME
    ds.ContentQualification = "PRODUCT"
    ds.ManufacturerModelName, ds.DeviceSerialNumber, ds.SoftwareVersions = "volumegen", "1", "1"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = _uid(series_uuid, "frame")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.KVP = 120
    ds.AcquisitionContextSequence = Sequence()
    ds.NumberOfFrames = frames
    ds.InstanceNumber = 1
    dimension_uid = _uid(series_uuid, "dimensions")
    ds.DimensionOrganizationType = "3D"
    organization = Dataset()
    organization.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = Sequence([organization])
    indices = []
    for tag, description in ((0x00209056, "Stack ID"), (0x00209057, "In-Stack Position Number")):
        index = Dataset()
        index.DimensionOrganizationUID = dimension_uid
        index.DimensionIndexPointer = tag
        index.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
        index.DimensionDescriptionLabel = description
        indices.append(index)
    ds.DimensionIndexSequence = Sequence(indices)

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [SPACING, SPACING]
    measures.SliceThickness = STEP
    measures.SpacingBetweenSlices = STEP
    shared.PixelMeasuresSequence = Sequence([measures])
    plane = Dataset()
    orientation = _axial(0.0)[1]
    plane.ImageOrientationPatient = orientation
    shared.PlaneOrientationSequence = Sequence([plane])
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = -1024, 1, "HU"
    shared.PixelValueTransformationSequence = Sequence([transform])
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    frame_type.PixelPresentation = "MONOCHROME"
    frame_type.VolumetricProperties = "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    shared.CTImageFrameTypeSequence = Sequence([frame_type])
    window = Dataset()
    window.WindowCenter, window.WindowWidth = 40, 400
    shared.FrameVOILUTSequence = Sequence([window])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    per_frame, pixels = [], []
    for k in range(frames):
        position, _ = _axial((k - (frames - 1) / 2) * STEP)
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        content.DimensionIndexValues = [1, k + 1]
        content.FrameAcquisitionNumber = 1
        content.FrameAcquisitionDateTime = ds.AcquisitionDateTime
        content.FrameReferenceDateTime = ds.AcquisitionDateTime
        content.FrameAcquisitionDuration = 1000.0
        item.FrameContentSequence = Sequence([content])
        position_item = Dataset()
        position_item.ImagePositionPatient = _round(position)
        item.PlanePositionSequence = Sequence([position_item])
        per_frame.append(item)
        pixels.append(_phantom(position_item.ImagePositionPatient, orientation, 1064, 0, seed=k + 1))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(pixels).tobytes()
    return ds


def _unconvertible(row: dict) -> list:
    """Two CT Image instances with the image pixel module's description but no Pixel Data (as a
    scout whose pixels were stripped): nothing to make a volume of."""
    datasets = []
    for k in range(2):
        position, orientation = _axial((k - 0.5) * STEP)
        ds = _slice(row, k + 1, position, orientation)
        del ds.PixelData
        datasets.append(ds)
    return datasets


def _seg_image(row: dict) -> list:
    """SEG_SLICES axial CT slices, instance k + 1 at z = 5k - 27.5 (ascending)."""
    return [_slice(row, k + 1, *_axial((k - (SEG_SLICES - 1) / 2) * STEP)) for k in range(SEG_SLICES)]


def _segmentation(row: dict, images: list):
    """A BINARY SEG of ``images`` (sorted by position) with the masks of ``seg_masks()``:
    highdicom leaves out the frames where a segment is empty."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    masks = seg_masks()
    pixel_array = np.stack([masks[n] for n in sorted(masks)], axis=-1)  # (slices, rows, columns, segments)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=Code(*category),
            segmented_property_type=Code(*kind),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, (label, category, kind) in sorted(SEG_SEGMENTS.items())
    ]
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=row["SeriesInstanceUID"],
        series_number=int(row["SeriesNumber"]) if str(row.get("SeriesNumber") or "").isdigit() else 300,
        sop_instance_uid=_uid(row["crdc_series_uuid"], 1),
        instance_number=1,
        manufacturer="idcfs testbed (synthetic data)",
        manufacturer_model_name="volumegen",
        software_versions="1",
        device_serial_number="1",
        content_description="Synthetic: liver, tumor (overlaps the liver), portal vein",
        content_label="SEGMENTATION",
        content_creator_name="idcfs^testbed",
        series_description=(row.get("SeriesDescription") or "Segmentation")[:64],
        content_date=_DATE,
        content_time=_TIME,
        series_date=_DATE,
        series_time=_TIME,
    )
    return _fixed(seg, row["crdc_series_uuid"])


def _fixed(dataset, series_uuid: str):
    """``dataset`` with what highdicom takes from the clock or makes up at random set to fixed
    values (creation date and time, contribution date and time, dimension organization UID)."""
    dimension_uid = _uid(series_uuid, "dimensions")
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = _DATE, _TIME

    def visit(ds, element) -> None:
        if element.keyword == "DimensionOrganizationUID":
            element.value = dimension_uid
        elif element.keyword == "ContributionDateTime":
            element.value = _DATE + _TIME

    dataset.walk(visit)
    return dataset
