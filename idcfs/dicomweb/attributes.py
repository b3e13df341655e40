"""Which DICOM attributes the catalog answers, from which of its columns, and how a value is
written in DICOM JSON (PS3.18 F.2).

IDC's index is series-level: every study and series attribute it holds is a column of the
catalog, so a search over a whole release reads columns and makes no request. Attributes QIDO
returns by default that the index does not hold (AccessionNumber, StudyTime, ...) are returned
empty, as a de-identified IDC header mostly has them, and match only a universal value.
"""

from __future__ import annotations

import functools
from typing import Any

from pydicom.datadict import tag_for_keyword

from idcfs.dicomweb.query import vr_of

#: The catalog's column holding each attribute a search can match on. PatientName is not in IDC's
#: index; IDC's de-identified names are the patients' IDs in most collections, so a PatientName
#: search matches PatientID (said in README). ModalitiesInStudy matches a study's series' Modality.
COLUMN_OF = {
    "StudyInstanceUID": "StudyInstanceUID",
    "SeriesInstanceUID": "SeriesInstanceUID",
    "PatientID": "PatientID",
    "PatientName": "PatientID",
    "StudyDate": "StudyDate",
    "StudyDescription": "StudyDescription",
    "PatientSex": "PatientSex",
    "PatientAge": "PatientAge",
    "ModalitiesInStudy": "Modality",
    "Modality": "Modality",
    "SeriesDate": "SeriesDate",
    "SeriesDescription": "SeriesDescription",
    "SeriesNumber": "SeriesNumber",
    "BodyPartExamined": "BodyPartExamined",
    "SOPClassesInStudy": "SOPClassUID",
    "SOPClassUID": "SOPClassUID",
}

#: Attributes returned (empty) and matched as empty: not in IDC's index.
NOT_INDEXED = frozenset(
    {
        "AccessionNumber",
        "StudyTime",
        "StudyID",
        "ReferringPhysicianName",
        "PatientBirthDate",
        "SeriesTime",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "TimezoneOffsetFromUTC",
    }
)

#: A study's attributes in every answer (PS3.18 table 10.6.3-3), and those an ``includefield``
#: may add; the same for a series (table 10.6.3-4).
STUDY_DEFAULT = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "StudyDescription",  # not in the table, but every viewer's study list shows it
)
STUDY_EXTRA = ("PatientAge", "SOPClassesInStudy", "TimezoneOffsetFromUTC")
SERIES_DEFAULT = (
    "SpecificCharacterSet",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "SeriesInstanceUID",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "InstanceAvailability",
    "RetrieveURL",
    "StudyInstanceUID",
)
SERIES_EXTRA = ("SeriesDate", "SeriesTime", "BodyPartExamined", "SOPClassUID")

#: Matches ignoring case: person names (PS3.4 C.2.2.2.1) and free-text descriptions, as a person
#: types them into a viewer's search box.
CASE_INSENSITIVE = frozenset({"PatientName", "StudyDescription", "SeriesDescription"})


@functools.lru_cache(maxsize=1024)
def tag_hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


def element(keyword: str, value: Any) -> dict[str, Any]:
    """One attribute in DICOM JSON: ``{"vr": ..., "Value": [...]}``; no Value when empty."""
    vr = vr_of(keyword)
    values = value if isinstance(value, list) else [value]
    values = [v for v in values if v is not None and v != ""]
    if not values:
        return {"vr": vr}
    if vr == "PN":
        values = [{"Alphabetic": str(v)} for v in values]
    elif vr == "DA":
        values = [str(v).replace("-", "") for v in values]
    elif vr in ("IS", "SL", "UL", "US", "SS"):
        values = [_number(v) for v in values]
    else:
        values = [str(v) for v in values]
    return {"vr": vr, "Value": values}


def _number(value: Any) -> int | str:
    try:
        return int(str(value).strip())
    except ValueError:
        return str(value)  # an index value that is not a whole number, passed on as it is


def record(values: dict[str, Any]) -> dict[str, Any]:
    """A result in DICOM JSON, its attributes in tag order."""
    return {tag_hex(keyword): element(keyword, value) for keyword, value in sorted(values.items(), key=_tag_order)}


def _tag_order(item: tuple[str, Any]) -> int:
    return int(tag_hex(item[0]), 16)
