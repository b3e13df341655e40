"""Which series get a ``.nifti`` folder, decided from the catalog alone (no network): a listing
of a study folder must not fetch anything to know its entries."""

from __future__ import annotations

#: The folder of a series' volumes is the series folder's name with this suffix.
SUFFIX = ".nifti"

#: Modalities whose series are images dcm2niix makes volumes of.
IMAGE_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})
#: Segmentations: a label map on the grid of the image series they reference.
LABEL_MODALITIES = frozenset({"SEG"})

IMAGE = "image"
LABELS = "labels"


def kind_of(modality: str | None, series_bytes: int, limit_bytes: int) -> str | None:
    """:data:`IMAGE`, :data:`LABELS`, or None: not a volume (slides, reports, key objects,
    presentation states, ...) or a series larger than ``limit_bytes`` (too large to convert)."""
    if series_bytes > limit_bytes:
        return None
    if modality in IMAGE_MODALITIES:
        return IMAGE
    if modality in LABEL_MODALITIES:
        return LABELS
    return None


def volume_folder(series_folder: str) -> str:
    return series_folder + SUFFIX


def series_folder_of(name: str) -> str | None:
    """The series folder a ``.nifti`` folder's name stands for, or None."""
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) and len(name) > len(SUFFIX) else None
