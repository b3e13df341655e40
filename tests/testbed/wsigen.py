"""Synthetic slide microscopy: DICOM VL Whole Slide Microscopy Image series that OpenSlide opens.

Slide microscopy is about half of IDC's bytes: multi-GB files that viewers read as random tiles.
A generated slide is a pyramid, one file per level (level 0 the full resolution, each next level
half of it), TILED_FULL, JPEG baseline tiles, with a Basic Offset Table (as IDC's converted
slides have, so a reader finds a frame without scanning the file). Each series takes its identity
from a real SM series of the bundled index and is written at that series' real bucket path.

Tiles are a few distinct JPEG-encoded noise patterns laid out in a fixed order: noise compresses
as poorly as tissue does (so sizes are realistic), and encoding a few tiles keeps a 300 MB slide
fast to write. The same arguments always produce the same bytes.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict
from pathlib import Path

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

#: VL Whole Slide Microscopy Image Storage.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: JPEG Baseline (Process 1).
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
#: A real SM series (tcga_hnsc, 3 instances): where the small test slide is written.
SMALL_SLIDE_SERIES = "835947a4-e852-49b0-be10-a111408a9e14"
#: A real SM series (rms_mutation_prediction, 6 instances): where the bench's big slide goes.
BIG_SLIDE_SERIES = "e532c386-e299-45ea-829a-4fc7c9e0dbcf"
#: Distinct tiles encoded per slide.
_PATTERNS = 48


def generate_slide(
    out_dir: str | os.PathLike[str],
    series_uuid: str = SMALL_SLIDE_SERIES,
    width: int = 4096,
    height: int = 3072,
    tile: int = 256,
    levels: int = 3,
    quality: int = 90,
) -> GeneratedSeries:
    """Write the slide under ``out_dir/s3/<aws bucket>/<uuid>/`` and ``out_dir/gcs/...``
    (hard links), once: ``slide-<uuid>.json`` records what was written, and a second call with
    the same arguments reuses it."""
    out = Path(out_dir)
    stamp = {"series": series_uuid, "width": width, "height": height, "tile": tile, "levels": levels,
             "quality": quality, "v": 2}  # fmt: skip
    record = out / f"slide-{series_uuid}.json"
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("stamp") == stamp:
            series = GeneratedSeries(**{k: v for k, v in saved["series"].items() if k != "files"})
            series.files = [GeneratedFile(**f) for f in saved["series"]["files"]]
            return series
    row = index_rows([series_uuid])[0]
    series = series_from_row(row)
    patterns = _tile_patterns(tile, quality, seed=hash_seed(series_uuid))
    for level in range(levels):
        scale = 1 << level
        dataset = _level_dataset(row, level, -(-width // scale), -(-height // scale), tile, patterns)
        save_object(out, series, level_file_name(series_uuid, level), dataset)
    series.files.sort(key=lambda f: f.name)
    record.write_text(json.dumps({"stamp": stamp, "series": asdict(series)}, indent=1))
    return series


def level_file_name(series_uuid: str, level: int) -> str:
    """The object name of a generated slide's pyramid level (0: full resolution)."""
    return _deterministic_uuid(series_uuid, "level", level) + ".dcm"


def hash_seed(text: str) -> int:
    return int(text.replace("-", "")[:8], 16)


def _tile_patterns(tile: int, quality: int, seed: int) -> list[bytes]:
    """JPEG tiles of smooth colour plus noise, as a scanner's tissue tiles compress."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    patterns = []
    for _ in range(_PATTERNS):
        base = rng.integers(120, 230, size=3)
        noise = rng.normal(0, 28, size=(tile, tile, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        encoded = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(encoded, "JPEG", quality=quality, subsampling=1)  # 4:2:2
        patterns.append(encoded.getvalue())
    return patterns


def _level_dataset(row: dict, level: int, width: int, height: int, tile: int, patterns: list[bytes]):
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence

    ds = _base_dataset(row, WSI_SOP_CLASS, level + 1)
    ds.file_meta.TransferSyntaxUID = JPEG_BASELINE
    ds.ImageType = ["ORIGINAL" if level == 0 else "DERIVED", "PRIMARY", "VOLUME", "NONE" if level == 0 else "RESAMPLED"]
    ds.Modality = "SM"
    ds.FrameOfReferenceUID = _uid(row["crdc_series_uuid"], "frame")
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.ContainerIdentifier = row["PatientID"][:16] or "SLIDE"
    ds.ContainerTypeCodeSequence = Sequence([_code("433466003", "SCT", "Microscope slide")])
    ds.SpecimenDescriptionSequence = Sequence([Dataset()])
    ds.SpecimenDescriptionSequence[0].SpecimenIdentifier = ds.ContainerIdentifier
    ds.SpecimenDescriptionSequence[0].SpecimenUID = _uid(row["crdc_series_uuid"], "specimen")
    ds.SpecimenDescriptionSequence[0].IssuerOfTheSpecimenIdentifierSequence = Sequence()
    ds.SpecimenDescriptionSequence[0].SpecimenPreparationSequence = Sequence()
    ds.AcquisitionDateTime = ds.StudyDate + "120000"
    ds.ContentDate, ds.ContentTime = ds.StudyDate, "120000"
    ds.VolumetricProperties = "VOLUME"
    ds.BurnedInAnnotation = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = 10.0
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.DimensionOrganizationSequence = Sequence([Dataset()])
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = _uid(row["crdc_series_uuid"], "dimensions")
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows = ds.Columns = tile
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.TotalPixelMatrixOriginSequence = Sequence([Dataset()])
    origin = ds.TotalPixelMatrixOriginSequence[0]
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 0.0, 0.0
    ds.ImageOrientationSlide = [0.0, -1.0, 0.0, -1.0, 0.0, 0.0]
    spacing = 0.00025 * (1 << level)  # mm: 0.25 µm a pixel at level 0
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = width * spacing, height * spacing, 0.001
    ds.NumberOfOpticalPaths = 1
    ds.OpticalPathSequence = Sequence([Dataset()])
    path = ds.OpticalPathSequence[0]
    path.OpticalPathIdentifier = "1"
    path.IlluminationTypeCodeSequence = Sequence([_code("111744", "DCM", "Brightfield illumination")])
    path.IlluminationColorCodeSequence = Sequence([_code("414298005", "SCT", "Full Spectrum")])
    path.ICCProfile = _icc_profile()  # as IDC's slides carry one: bulk data within a sequence
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [spacing, spacing]
    measures.SliceThickness = 0.001
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    columns, rows = -(-width // tile), -(-height // tile)
    frames = [patterns[(level * 7 + k * 13 + (k // columns) * 5) % len(patterns)] for k in range(columns * rows)]
    ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _icc_profile() -> bytes:
    """An sRGB ICC profile (Pillow's), padded past 1 KiB as scanners' are (so DICOM JSON carries it
    as a BulkDataURI, not inline); its header's size says so, and littleCMS reads it."""
    import struct

    from PIL import ImageCms

    built = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() + bytes(1024)
    return struct.pack(">I", len(built)) + built[4:]
