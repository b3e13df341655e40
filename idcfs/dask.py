"""Cohorts past one machine: map a function over series on a Dask (``distributed``) cluster.

A mount is per node: each worker node mounts IDC (the systemd unit, or ``idcfs mount``) at the
same path, the whole selection or its part ``--shard K/N``. :func:`map_series` sends each series
to a worker whose node's mount holds it, the task reads the series through that mount (the
node's own cache, no download step), and the results come back as one DataFrame, a row per
series. A task that fails is a row with its error, not the end of the cohort.

    from distributed import Client
    from idcfs.dask import map_series

    client = Client("tcp://scheduler:8786")
    table = map_series(client, count_slices, cohort_df, mountpoint="/mnt/idc")
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from idcfs.api import Mount, series_identifiers
from idcfs.catalog.index import shard_of
from idcfs.service.mounting import MountError

__all__ = ["map_series", "place_series"]


def map_series(
    client: Any,
    func: Callable[[Any], Any],
    series: Any,
    mountpoint: str | os.PathLike[str] | None = None,
    *,
    fs: Any = None,
    retries: int = 0,
) -> Any:
    """Run ``func(series_folder)`` for every series on the cluster of ``client``; a DataFrame.

    Through the workers' mounts at ``mountpoint`` (``func`` gets a ``Path``), or through
    ``idc://`` with the options of ``fs``, an ``IdcFileSystem`` (``func`` gets a ``UPath``).

    ``series``: a DataFrame (an idc-index ``sql_query`` result) with a crdc_series_uuid or
    SeriesInstanceUID column, or identifiers. When the workers' mounts are shards, a
    PatientID column (or else each node's own catalog, asked once a series) says which node
    holds which series. ``func``'s result becomes the row's columns when it is a dict, the
    ``result`` column otherwise; a row also has ``series``, ``path``, ``host``, ``seconds``
    and ``error`` (None when the task worked).
    """
    import pandas as pd

    if (mountpoint is None) == (fs is None):
        raise TypeError("map_series: give the workers' mountpoint or an idc:// filesystem (fs=), one of them")
    identifiers = series_identifiers(series)
    futures, rows = [], []
    if fs is not None:
        placement = Placement()
        placement.groups.append(([], identifiers))  # any worker: each opens idc:// itself
        where: dict[str, Any] = {"fs": fs}
    else:
        mounts = client.run(_mount_facts, str(mountpoint))
        placement = place_series(
            identifiers, mounts, _patients(series), lambda ids: client.run(_held, str(mountpoint), ids)
        )
        where = {"mountpoint": str(mountpoint)}
    for workers, group in placement.groups:
        futures += client.map(
            _run_one,
            group,
            function=func,
            **where,
            workers=workers or None,
            allow_other_workers=False,
            pure=False,
            retries=retries,
        )
    rows += [_row(identifier, None, None, 0.0, reason, host=None) for identifier, reason in placement.unplaced.items()]
    rows += client.gather(futures)
    table = pd.DataFrame(rows)
    if not table.empty:
        order = {identifier: k for k, identifier in enumerate(identifiers)}
        table = table.sort_values("series", key=lambda column: column.map(order)).reset_index(drop=True)
    return table


class Placement:
    """Which workers may run each series: ``groups`` of (worker addresses, series identifiers),
    and the series no worker can run, with the reason."""

    def __init__(self) -> None:
        self.groups: list[tuple[list[str], list[str]]] = []
        self.unplaced: dict[str, str] = {}


def place_series(
    identifiers: list[str],
    mounts: dict[str, dict[str, Any]],
    patients: dict[str, str] | None,
    ask_held: Callable[[list[str]], dict[str, list[str]]],
) -> Placement:
    """Send each series where its node's mount holds it.

    ``mounts``: per worker address, what :func:`_mount_facts` found (its shard, or an error).
    Unsharded mounts hold the whole selection: any of their workers will do. Sharded ones hold
    the part :func:`idcfs.catalog.index.shard_of` gives the series' PatientID, known from ``patients``
    or else by asking each node's catalog (``ask_held``).
    """
    placement = Placement()
    usable = {address: facts for address, facts in mounts.items() if not facts.get("error")}
    if not usable:
        reasons = sorted({facts["error"] for facts in mounts.values()}) or ["the cluster has no workers"]
        placement.unplaced = dict.fromkeys(identifiers, "; ".join(reasons))
        return placement
    whole = [address for address, facts in usable.items() if not facts.get("shard")]
    if whole or not identifiers:
        placement.groups.append((whole or list(usable), identifiers))
        return placement
    by_part: dict[str, list[str]] = {}
    for address, facts in usable.items():
        by_part.setdefault(facts["shard"], []).append(address)
    if patients is not None and all(identifier in patients for identifier in identifiers):
        wanted: dict[str, list[str]] = {}
        for identifier in identifiers:
            part = None
            for shard in by_part:
                count = int(shard.split("/")[1])
                if f"{shard_of(patients[identifier], count)}/{count}" == shard:
                    part = shard
                    break
            if part is None:
                placement.unplaced[identifier] = "no worker's mount holds its shard"
            else:
                wanted.setdefault(part, []).append(identifier)
        placement.groups += [(by_part[part], group) for part, group in wanted.items()]
        return placement
    held = ask_held(identifiers)  # per worker: the identifiers its mount holds
    wanted_by_workers: dict[tuple[str, ...], list[str]] = {}
    for identifier in identifiers:
        workers = tuple(address for address in usable if identifier in set(held.get(address, ())))
        if workers:
            wanted_by_workers.setdefault(workers, []).append(identifier)
        else:
            placement.unplaced[identifier] = "not in any worker's mount"
    placement.groups += [(list(workers), group) for workers, group in wanted_by_workers.items()]
    return placement


def _patients(series: Any) -> dict[str, str] | None:
    """Series identifier -> PatientID, when ``series`` is a DataFrame that has both."""
    columns = getattr(series, "columns", None)
    if columns is None or "PatientID" not in columns:
        return None
    for column in ("crdc_series_uuid", "SeriesInstanceUID"):
        if column in columns:
            return dict(zip(series[column].astype(str), series["PatientID"].astype(str), strict=True))
    return None


def _mount_facts(mountpoint: str) -> dict[str, Any]:
    """On a worker: the node's mount (its shard), or why it has none."""
    try:
        info = Mount(mountpoint).info
    except MountError as error:
        return {"host": socket.gethostname(), "error": f"{socket.gethostname()}: {error}"}
    return {"host": socket.gethostname(), "shard": info.get("selection", {}).get("shard")}


def _held(mountpoint: str, identifiers: list[str]) -> list[str]:
    """On a worker: which of ``identifiers`` the node's mount holds."""
    mount = Mount(mountpoint)
    return [identifier for identifier in identifiers if mount.paths(identifier)]


def _series_folder(identifier: str, mountpoint: str | None, fs: Any) -> Any:
    """On a worker: the series' folder, in the node's mount (a Path) or in ``idc://`` (a UPath)."""
    if fs is None:
        folders = Mount(str(mountpoint)).paths(identifier)
        if not folders:
            raise LookupError(f"not in the mount {mountpoint} of {socket.gethostname()}")
        return folders[0]
    from upath import UPath

    found = fs.path(identifier)
    if not found:
        raise LookupError("not in the idc:// tree of the options given")
    return UPath(f"idc://{found[0]}", **fs.storage_options)


def _run_one(
    identifier: str, function: Callable[[Any], Any], mountpoint: str | None = None, fs: Any = None
) -> dict[str, Any]:
    """On a worker: ``func`` over the series folder, as a row (its error caught, as text)."""
    started = time.perf_counter()
    folder = None
    try:
        folder = _series_folder(identifier, mountpoint, fs)
        result = function(folder)
    except Exception as error:  # noqa: BLE001 - one series' failure is its row, not the cohort's end
        reason = f"{type(error).__name__}: {error}"
        return _row(identifier, folder, None, time.perf_counter() - started, reason, socket.gethostname())
    return _row(identifier, folder, result, time.perf_counter() - started, None, socket.gethostname())


def _row(
    identifier: str, folder: Any, result: Any, seconds: float, error: str | None, host: str | None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "series": identifier,
        "path": str(folder) if folder is not None else None,
        "host": host,
        "seconds": round(seconds, 4),
        "error": error,
    }
    if isinstance(result, dict):
        row.update(result)
    elif error is None:
        row["result"] = result
    return row
