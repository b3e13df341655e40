"""Valid, synthetic DICOM series laid out at the real bucket paths of real IDC series.

The real buckets are out of reach offline, so the demo, the tests and the benchmarks serve
generated objects from a local S3/GCS server. Each generated series takes its identity from the
bundled index (collection, patient, study and series UIDs, modality, crdc_series_uuid, bucket),
so the mounted tree finds it exactly where the real one would be. Pixel data is a phantom with
proper CT/MR geometry, so converters (dcm2niix, SimpleITK) build a real volume from it.
Content is deterministic: the same arguments always produce the same bytes.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from idcfs.remote.buckets import AWS_TO_GCS_BUCKET

#: Real series of the current index: CT + SR of one study (idc-open-data), an MR
#: (idc-open-data-two) and a CT under a non-commercial license (idc-open-data-cr).
DEFAULT_SERIES = (
    "743bb517-4a33-48c7-bebb-9b146d4a0b58",  # lung_pet_ct_dx Lung_Dx-A0002 CT, idc-open-data
    "61fc8280-bc41-48eb-9d7e-1f3f7493fe11",  # the same study's SR, idc-open-data
    "01472859-69c4-48f9-b77e-87b7e8b91dbd",  # cptac_cm C3L-00629 MR, idc-open-data-two
    "98ec51e4-fbb4-4dc9-80db-8857aa20dc27",  # midrc_ricord_1b CT, idc-open-data-cr
)

_UID_ROOT = "2.25."  # UUID-derived UIDs need no registered root
_NAMESPACE = uuid.UUID("6f1d3c5e-0000-4000-8000-1dcf5000da7a")


@dataclass
class GeneratedFile:
    name: str
    size: int


@dataclass
class GeneratedSeries:
    """What was written for one series, and where it appears in the default layout."""

    crdc_series_uuid: str
    aws_bucket: str
    gcs_bucket: str
    collection_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    path: str
    files: list[GeneratedFile] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _deterministic_uuid(*parts: object) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts)))


def _uid(*parts: object) -> str:
    return _UID_ROOT + str(uuid.UUID(_deterministic_uuid(*parts)).int)


def index_rows(series_uuids: tuple[str, ...] | list[str], index_file: str | None = None) -> list[dict]:
    """The index rows of ``series_uuids`` (in that order)."""
    import duckdb

    from idcfs.catalog.index import IndexFiles

    files = IndexFiles.from_path(index_file) if index_file else IndexFiles.bundled()
    connection = duckdb.connect()
    try:
        cursor = connection.execute(
            "SELECT * FROM read_parquet(?) WHERE crdc_series_uuid IN (SELECT unnest(?))",
            [str(files.index), list(series_uuids)],
        )
        names = [d[0] for d in cursor.description]
        rows = {row[names.index("crdc_series_uuid")]: dict(zip(names, row, strict=False)) for row in cursor.fetchall()}
    finally:
        connection.close()
    missing = [u for u in series_uuids if u not in rows]
    if missing:
        raise ValueError(f"series not in the index: {missing}")
    return [rows[u] for u in series_uuids]


def generate(
    out_dir: str | os.PathLike[str],
    series_uuids: tuple[str, ...] | list[str] = DEFAULT_SERIES,
    max_instances: int | None = None,
    image_size: int = 256,
    index_file: str | None = None,
) -> list[GeneratedSeries]:
    """Write the series under ``out_dir/s3/<aws bucket>/`` and ``out_dir/gcs/<gcs bucket>/``.

    ``series.json`` records what was written; a second call with the same arguments reuses it.
    """
    out = Path(out_dir)
    stamp = {"series": list(series_uuids), "max_instances": max_instances, "image_size": image_size, "v": 1}
    record = out / "series.json"
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("stamp") == stamp:
            return [_series_from_json(s) for s in saved["series"]]
    generated = []
    for row in index_rows(series_uuids, index_file):
        generated.append(_write_series(out, row, max_instances, image_size))
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"stamp": stamp, "series": [asdict(s) for s in generated]}, indent=1))
    return generated


def _series_from_json(data: dict) -> GeneratedSeries:
    files = [GeneratedFile(**f) for f in data.pop("files")]
    return GeneratedSeries(**data, files=files)


def series_from_row(row: dict) -> GeneratedSeries:
    """The series of an index row, with its path in the default layout (no files yet)."""
    return GeneratedSeries(
        crdc_series_uuid=row["crdc_series_uuid"],
        aws_bucket=row["aws_bucket"],
        gcs_bucket=AWS_TO_GCS_BUCKET[row["aws_bucket"]],
        collection_id=row["collection_id"],
        patient_id=row["PatientID"],
        study_uid=row["StudyInstanceUID"],
        series_uid=row["SeriesInstanceUID"],
        modality=row["Modality"],
        path="/".join(
            [
                row["collection_id"],
                row["PatientID"],
                row["StudyInstanceUID"],
                f"{row['Modality']}_{row['SeriesInstanceUID']}",
            ]
        ),
    )


def _write_series(out: Path, row: dict, max_instances: int | None, image_size: int) -> GeneratedSeries:
    series = series_from_row(row)
    series_uuid = series.crdc_series_uuid
    count = int(row["instanceCount"] or 1)
    if max_instances is not None:
        count = min(count, max_instances)
    for number in range(1, count + 1):
        dataset = (_sr_dataset if series.modality == "SR" else _image_dataset)(row, number, count, image_size)
        save_object(out, series, _deterministic_uuid(series_uuid, number) + ".dcm", dataset)
    series.files.sort(key=lambda f: f.name)
    return series


def save_object(out: Path, series: GeneratedSeries, name: str, dataset) -> None:
    """Write ``dataset`` as object ``name`` of ``series``: under ``out/s3/<aws bucket>/`` and, as
    a hard link, under ``out/gcs/<gcs bucket>/`` (the mirror holds the same bytes)."""
    s3_dir = out / "s3" / series.aws_bucket / series.crdc_series_uuid
    gcs_dir = out / "gcs" / series.gcs_bucket / series.crdc_series_uuid
    s3_dir.mkdir(parents=True, exist_ok=True)
    gcs_dir.mkdir(parents=True, exist_ok=True)
    path = s3_dir / name
    dataset.save_as(path, enforce_file_format=True)
    twin = gcs_dir / name
    if twin.exists():
        twin.unlink()
    os.link(path, twin)
    series.files.append(GeneratedFile(name=name, size=path.stat().st_size))


def _base_dataset(row: dict, sop_class: str, number: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    sop_instance = _uid(row["crdc_series_uuid"], number)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientID = row["PatientID"]
    ds.PatientName = row["PatientID"]
    ds.PatientSex = (row.get("PatientSex") or "O")[:1]
    ds.StudyInstanceUID = row["StudyInstanceUID"]
    ds.SeriesInstanceUID = row["SeriesInstanceUID"]
    ds.StudyDate = (row.get("StudyDate") or "20000101").replace("-", "")
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = row["Modality"]
    ds.SeriesNumber = int(row.get("SeriesNumber") or 1) if str(row.get("SeriesNumber") or "1").isdigit() else 1
    ds.SeriesDescription = (row.get("SeriesDescription") or "idcfs synthetic series")[:64]
    ds.InstanceNumber = number
    ds.Manufacturer = "idcfs testbed (synthetic data)"
    return ds


def _image_dataset(row: dict, number: int, count: int, size: int):
    """A slice of a sphere phantom; CT in HU via rescale, MR as plain intensities."""
    modality = row["Modality"]
    sop_class = "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"
    ds = _base_dataset(row, sop_class, number)
    spacing, thickness = 300.0 / size, 2.5
    z = (number - 1) * thickness
    ds.FrameOfReferenceUID = _uid(row["crdc_series_uuid"], "frame")
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [-150.0, -150.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = thickness
    ds.SliceLocation = z
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if modality == "MR":
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = 10
        ds.RepetitionTime = 500
        background, inside = 0, 800
    else:
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        background, inside = 0, 1064  # air (-1024 HU) and soft tissue (+40 HU)
    axis = (np.arange(size) - size / 2 + 0.5) * spacing
    radius = 100.0
    dz = z - (count - 1) * thickness / 2
    inside_mask = axis[None, :] ** 2 + axis[:, None] ** 2 + dz**2 <= radius**2
    rng = np.random.default_rng(number)
    pixels = np.where(inside_mask, inside, background).astype(np.int16) + rng.integers(
        0, 20, (size, size), dtype=np.int16
    )
    ds.PixelData = pixels.tobytes()
    return ds


def _sr_dataset(row: dict, number: int, count: int, size: int):
    """A Basic Text SR with one finding."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _base_dataset(row, "1.2.840.10008.5.1.4.1.1.88.11", number)

    def code(value: str, scheme: str, meaning: str) -> Sequence:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        return Sequence([item])

    ds.ContentDate = ds.StudyDate
    ds.ContentTime = "120000"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = code("18748-4", "LN", "Diagnostic Imaging Report")
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = code("121071", "DCM", "Finding")
    finding.TextValue = "Synthetic sphere phantom; generated by the idcfs testbed."
    ds.ContentSequence = Sequence([finding])
    ds.ContentTemplateSequence = Sequence()
    return ds
