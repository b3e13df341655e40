"""The identifiers IDC users hold, told apart by shape: a CRDC UUID names one version of a series,
a DICOM UID (digits and dots) a series or a study; a PatientID can look like anything."""

from __future__ import annotations

import re

#: Columns whose value names one series (its folder is the series folder, whatever the layout).
SERIES_ID_COLUMNS = ("crdc_series_uuid", "SeriesInstanceUID")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def is_crdc_uuid(text: str) -> bool:
    return _UUID.match(text) is not None


def is_dicom_uid(text: str) -> bool:
    return _DICOM_UID.match(text) is not None
