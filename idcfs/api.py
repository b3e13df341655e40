"""The Python API: ``idcfs.mount()`` for notebooks and scripts, and :class:`Mount`.

Most IDC users work in Jupyter or Colab, whose kernels run threads: a mount made by forking
that process would inherit locks held by threads that no longer exist. So a mount is made the
way the CLI makes it, by running ``idcfs mount`` as a new program (``python -m idcfs``), which
starts the daemon in a session of its own and waits until it answers. The options are the
CLI's, from the one table in :mod:`idcfs.config.options`; a failure raises :class:`MountError` with
the CLI's message.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from idcfs.catalog.identifiers import SERIES_ID_COLUMNS
from idcfs.catalog.layout import escape_name
from idcfs.config.options import OPTIONS_BY_NAME, default_cache_dir
from idcfs.config.sources import ConfigError, as_flags, check_given
from idcfs.service.mounting import MountError, daemon_gone, mount_info, mount_of, unmount
from idcfs.service.report import read_stats
from idcfs.util.suggest import did_you_mean

#: Options the API does not take: it always daemonizes, and ``series=`` is its manifest.
_NOT_API_OPTIONS = ("foreground",)
#: Columns ``series=`` takes identifiers from, in order of preference (exact objects first).

__all__ = ["Mount", "MountError", "folders_of", "mount"]


class Mount:
    """An idcfs mount: the one :func:`mount` made, or any existing one (``Mount("/mnt/idc")``,
    e.g. on a Dask worker, whose node mounted it from systemd).

    Used as a context manager, it unmounts on exit.
    """

    def __init__(self, mountpoint: str | os.PathLike[str]) -> None:
        self.mountpoint = mount_of(mountpoint)

    def __repr__(self) -> str:
        return f"Mount({str(self.mountpoint)!r})"

    def __fspath__(self) -> str:
        return str(self.mountpoint)

    def __truediv__(self, other: str | os.PathLike[str]) -> Path:
        return self.mountpoint / other

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unmount()

    @property
    def info(self) -> dict[str, Any]:
        """What the mount says of itself: release, layout, selection, source, cache folder."""
        return mount_info(self.mountpoint)

    def stats(self) -> dict[str, Any]:
        """The live statistics (as ``idcfs stats --json``): requests, bytes, cache hits, errors."""
        return read_stats(self.mountpoint)

    def paths(self, identifier: str) -> list[Path]:
        """Every folder of a SeriesInstanceUID, StudyInstanceUID, PatientID or crdc_series_uuid
        in this mount (several when the layout splits a study or patient); empty if none."""
        return _folders_in(self.mountpoint, identifier)

    def path(self, identifier: str) -> Path:
        """The folder of a series, study or patient (as ``idcfs path``).

        Raises KeyError if the mount does not hold it, and ValueError if it has several folders
        (a patient in two collections, a study split by modality): use :meth:`paths` then.
        """
        found = self.paths(identifier)
        if not found:
            raise KeyError(f"not in the mount {self.mountpoint}: {identifier}")
        if len(found) > 1:
            raise ValueError(f"{identifier} has {len(found)} folders in {self.mountpoint}; use Mount.paths()")
        return found[0]

    def unmount(self, lazy: bool = False) -> None:
        """Unmount (and wait for the daemon to finish writing its cache); nothing if already gone."""
        from idcfs.service.mounting import mounted_fuse_points

        if str(self.mountpoint) in mounted_fuse_points():
            unmount(self.mountpoint, lazy=lazy)


def folders_of(path: str | os.PathLike[str], identifier: str) -> list[Path]:
    """The folders of ``identifier`` in the mount that ``path`` is in (from its catalog: no
    network), as absolute paths; empty when the mount does not hold it."""
    return _folders_in(mount_of(path), identifier)


def _folders_in(point: Path, identifier: str) -> list[Path]:
    """:func:`folders_of` in the mount at ``point`` (already found: one lookup of the mount
    table for a cohort of identifiers, not one each)."""
    identifier = identifier.strip()
    if not identifier:
        return []
    try:
        text = (point / ".idcfs" / "by-id" / escape_name(identifier)).read_text()
    except FileNotFoundError:
        if not (point / ".idcfs" / "by-id").is_dir():
            raise MountError(f"{point} cannot look identifiers up: it was mounted by an older idcfs") from None
        return []
    except OSError as error:
        raise daemon_gone(point, error, f"look {identifier!r} up in {point}") from None
    return [point / line for line in text.splitlines() if line]


def mount(path: str | os.PathLike[str], *, series: Any = None, **options: Any) -> Mount:
    """Mount IDC on ``path`` (created if missing) and return the :class:`Mount` once it answers.

    ``options`` are the CLI's, by their config key: ``mount("~/idc", source="gcs",
    collection=["nlst"], cache_size="20G")``. ``series`` mounts exactly those series: a pandas
    DataFrame (an idc-index ``sql_query`` result) with a crdc_series_uuid or SeriesInstanceUID
    column, or an iterable of such identifiers.
    """
    mountpoint = Path(path).expanduser().absolute()
    if series is not None:
        if options.get("manifest"):
            raise TypeError("mount() takes series= or manifest=, not both")
        options["manifest"] = str(_series_manifest(series, options.get("cache_dir")))
    argv = ["mount", str(mountpoint), *_flags(options)]
    made = _make_folders(mountpoint)
    timeout = float(options.get("ready_timeout") or 300) + 60
    try:
        result = subprocess.run(
            [sys.executable, "-m", "idcfs", *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _remove_made(made)
        raise MountError(f"idcfs mount {mountpoint} did not finish in {timeout:.0f}s") from None
    if result.returncode != 0:
        _remove_made(made)
        raise MountError(_cli_message(result.stderr) or f"idcfs mount failed (exit status {result.returncode})")
    for line in _cli_message(result.stderr).splitlines():  # e.g. mounted offline: said, not raised
        warnings.warn(line.removeprefix("idcfs: warning: "), stacklevel=2)
    return Mount(mountpoint)


def _make_folders(mountpoint: Path) -> list[Path]:
    """Create the mount point and its missing parents; the folders made, deepest first."""
    made = []
    folder = mountpoint
    while not folder.exists() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    mountpoint.mkdir(parents=True, exist_ok=True)
    return made


def _remove_made(made: list[Path]) -> None:
    """A mount that failed leaves no folder it made (only empty ones are removed)."""
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _cli_message(stderr: str) -> str:
    """The CLI's error message, without its program prefix (an exception names its own type)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return "\n".join(line.removeprefix("idcfs: error: ").removeprefix("idcfs mount: error: ") for line in lines)


def _flags(options: dict[str, Any]) -> list[str]:
    """Keyword options as the CLI's flags (which win over the environment and a config file)."""
    known = [name for name in OPTIONS_BY_NAME if name not in _NOT_API_OPTIONS]
    for key in options:
        if key not in known:
            raise TypeError(f"mount() got an unknown option {key!r}{did_you_mean(key, known)}")
    try:
        checked = check_given(options, "mount()")
    except ConfigError as error:
        raise TypeError(str(error)) from None
    return as_flags(checked, skip=_NOT_API_OPTIONS, given_only=True)


def series_identifiers(series: Any) -> list[str]:
    columns = getattr(series, "columns", None)
    if columns is not None:  # a DataFrame
        for column in SERIES_ID_COLUMNS:
            if column in columns:
                return [str(value) for value in series[column].dropna().unique()]
        raise ValueError(
            f"series= needs a column {' or '.join(SERIES_ID_COLUMNS)}; it has {', '.join(map(str, columns))}"
        )
    if isinstance(series, str):
        return [series]
    if isinstance(series, Iterable):
        return [str(value) for value in series]
    raise TypeError(f"series= takes a DataFrame or identifiers, not {type(series).__name__}")


def _series_manifest(series: Any, cache_dir: Any) -> Path:
    """``series`` as a manifest file named by its content, so that mounting the same cohort
    again finds the catalog it built the first time."""
    identifiers = sorted(set(series_identifiers(series)))
    if not identifiers:
        raise ValueError("series= holds no series identifiers")
    text = "".join(f"{identifier}\n" for identifier in identifiers)
    folder = Path(cache_dir or os.environ.get("IDCFS_CACHE_DIR") or default_cache_dir()).expanduser() / "manifests"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.txt"
    if not path.exists():
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(text)
        temporary.replace(path)
    return path
