"""Series of many tiny objects at real UUID paths of the index: what a listing, a ``find`` or the
cost of one file is measured on, without gigabytes of pixels. IDC's largest series has 91,980
instances; the tests use a 1,500-object one, the benchmarks the real count.

A tiny object's bytes are its own key (so a read proves which object it got); a few names carry
spaces, ``+``, ``%`` and non-ASCII letters, which URLs and listing XML must carry intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tests.testbed.dicomgen import GeneratedSeries, _base_dataset, _deterministic_uuid, index_rows, series_from_row

#: A real 1,503-instance CT series (eay131) and IDC's largest, 91,980 instances (ldct_and_projection_data).
PAGED_SERIES = "39c370b4-ff5f-46d9-81f9-4b9911f6f9a7"
LARGEST_SERIES = "da034841-bcae-49df-94c3-c2d0aac183ad"
#: Keys a URL or an XML listing could mangle.
AWKWARD_NAMES = ("with space.dcm", "plus+sign.dcm", "percent%20.dcm", "ünïcødé-画像.dcm", "amp&lt;.dcm")


@dataclass
class TinySeries:
    series: GeneratedSeries
    names: list[str]  # sorted, as a listing returns them

    @property
    def crdc_series_uuid(self) -> str:
        return self.series.crdc_series_uuid

    @property
    def aws_bucket(self) -> str:
        return self.series.aws_bucket

    def payload(self, name: str) -> bytes:
        return f"{self.crdc_series_uuid}/{name}\n".encode()


def tiny_series(
    out_dir: Path, series_uuid: str, count: int, awkward: bool = False, clouds: tuple[str, ...] = ("s3", "gcs")
) -> TinySeries:
    """``count`` tiny objects (plus :data:`AWKWARD_NAMES` when asked) in the series' S3 and GCS
    buckets under ``out_dir``; reused when already written."""
    series = series_from_row(index_rows([series_uuid])[0])
    names = [f"{_deterministic_uuid(series_uuid, k)}.dcm" for k in range(count)]
    if awkward:
        names += AWKWARD_NAMES
    names.sort()
    made = TinySeries(series, names)
    stamp = json.dumps({"count": count, "awkward": awkward, "v": 1})
    for cloud in clouds:
        bucket = series.aws_bucket if cloud == "s3" else series.gcs_bucket
        folder = out_dir / cloud / bucket / series_uuid
        record = out_dir / f".{cloud}-{series_uuid}.json"
        if record.exists() and record.read_text() == stamp:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = folder / name
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, made.payload(name))
                os.close(fd)
        record.write_text(stamp)
    return made


def tiny_dicom_series(out_dir: Path, series_uuid: str, count: int) -> TinySeries:
    """``count`` tiny but valid CT instances (a 2 x 2 image each, the series' own study and series
    UIDs) in the series' S3 bucket under ``out_dir`` (``out_dir/s3``); reused when written."""
    row = index_rows([series_uuid])[0]
    series = series_from_row(row)
    names = sorted(f"{_deterministic_uuid(series_uuid, k)}.dcm" for k in range(count))
    made = TinySeries(series, names)
    folder = out_dir / "s3" / series.aws_bucket / series_uuid
    record = out_dir / f".dicom-{series_uuid}.json"
    stamp = json.dumps({"count": count, "v": 1})
    if record.exists() and record.read_text() == stamp:
        return made
    folder.mkdir(parents=True, exist_ok=True)
    for number, name in enumerate(names, start=1):
        ds = _base_dataset(row, "1.2.840.10008.5.1.4.1.1.2", number)
        ds.Rows = ds.Columns = 2
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes(8)
        ds.save_as(folder / name, enforce_file_format=True)
    record.write_text(stamp)
    return made
