"""The ``--volumes`` view: ``<series folder>.nifti/`` beside each image series and SEG.

Which series get one is read from the catalog (modality, size): listing a study folder costs no
request. What such a folder holds is built on first use by :mod:`idcfs.derived.volumes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from idcfs.derived.kinds import kind_of, series_folder_of, volume_folder
from idcfs.derived.pack import ERROR_FILE, PackedFile
from idcfs.derived.volumes import Built, OpenVolumeFile, SeriesToBuild, Volumes


@dataclass(frozen=True)
class VolumeFolder:
    """``<series folder>.nifti``: the series' catalog row and the series folder's name."""

    row: int
    base: str


class VolumeView:
    """Which series have a ``.nifti`` folder, and their builds (one :class:`Volumes`)."""

    def __init__(
        self,
        volumes: Volumes,
        modality: Callable[[int], str | None],
        series_bytes: Callable[[int], int],
        to_build: Callable[[int, str, str], SeriesToBuild],
    ) -> None:
        self.volumes = volumes
        self._modality = modality
        self._series_bytes = series_bytes
        self._to_build = to_build

    def kind(self, row: int) -> str | None:
        return kind_of(self._modality(row), self._series_bytes(row), self.volumes.series_limit)

    def with_volumes(self, names: list[tuple[str, bool]], first_row: int) -> list[tuple[str, bool]]:
        """A folder of series (``names``, rows from ``first_row`` on) with the ``.nifti`` folders
        added, in the tree's (bytewise) order."""
        added = [(volume_folder(name), True) for k, (name, _) in enumerate(names) if self.kind(first_row + k)]
        if not added:
            return names
        return sorted([*names, *added], key=lambda entry: entry[0].encode("utf-8", "surrogateescape"))

    def folder(self, name: str, series_row: Callable[[str], int | None]) -> VolumeFolder | None:
        """The ``.nifti`` folder ``name`` in a folder of series (``series_row`` finds a series
        folder's row there), or None when there is no such folder."""
        base = series_folder_of(name)
        if base is None:
            return None
        row = series_row(base)
        if row is None or self.kind(row) is None:
            return None
        return VolumeFolder(row, base)

    def series(self, folder: VolumeFolder) -> SeriesToBuild:
        kind = self.kind(folder.row)
        assert kind is not None
        return self._to_build(folder.row, kind, folder.base)

    def built(self, folder: VolumeFolder) -> Built:
        return self.volumes.contents(self.series(folder))

    def entries(self, folder: VolumeFolder) -> list[tuple[str, int]]:
        return [(f.name, f.size) for f in self.built(folder).pack.files]

    def file(self, folder: VolumeFolder, name: str) -> PackedFile | None:
        if not _may_hold(folder, name):
            return None
        return self.built(folder).pack.get(name)

    def open(self, folder: VolumeFolder, name: str) -> OpenVolumeFile | None:
        """A file of the folder, open (a face reads it like any file: ``size``, ``read``, ``live``)."""
        if not _may_hold(folder, name):
            return None
        series = self.series(folder)
        built = self.volumes.contents(series)
        file = built.pack.get(name)
        return None if file is None else self.volumes.open(series, built, file)


def _may_hold(folder: VolumeFolder, name: str) -> bool:
    """Whether a built folder could hold ``name``: its files are named after the series folder,
    or say why there are none. A desktop's probes (Explorer's ``desktop.ini``, Finder's ``._*``
    and ``.DS_Store``) are not found without building the volume."""
    return name.startswith(folder.base) or name == ERROR_FILE
