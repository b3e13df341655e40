"""``idcfs prefetch PATH...``: warm the cache for folders of a mount, before they are needed.

It reads the files through the mount itself, so the daemon's own cache (memory and disk) is what
gets filled, exactly as a later reader will find it; the command needs nothing from the daemon
but its files. Before reading, it estimates the size from the folders' ``user.idc.size_mb``
attributes and refuses what would not fit in the mount's disk cache (``--force`` overrides).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from idcfs.derived.kinds import series_folder_of
from idcfs.service.mounting import MountError, mount_info, mount_of
from idcfs.util.sizes import binary_size

CHUNK = 1 << 20


@dataclass
class WarmResult:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.bytes / self.seconds if self.seconds > 0 else 0.0
        failed = f"; {len(self.failures)} failed" if self.failures else ""
        size = f"{binary_size(self.bytes)} in {self.seconds:.1f}s ({binary_size(rate)}/s)"
        return f"prefetched {self.files} files, {size}{failed}"


Key = TypeVar("Key")


def read_files(
    files: list[tuple[Key, int]],
    read_whole: Callable[[Key], int],
    jobs: int,
    bar: Callable[..., Any],
    show_bar: bool,
) -> WarmResult:
    """Read every file of ``files`` (a key and its size) with ``jobs`` readers, under one byte
    bar made by ``bar`` (tqdm's class: the terminal's, or a notebook's from ``tqdm.auto``). A
    file that fails is a line in ``failures`` (the ``OSError``'s reason), not the end of the rest."""
    started = time.monotonic()
    result = WarmResult()
    total = sum(size for _, size in files)
    with (
        bar(total=total, unit="B", unit_scale=True, desc="prefetch", disable=not show_bar) as shown,
        ThreadPoolExecutor(max(1, jobs)) as pool,
    ):
        futures = {pool.submit(read_whole, key): key for key, _ in files}
        for future in as_completed(futures):
            try:
                count = future.result()
            except OSError as error:
                result.failures.append(f"{futures[future]}: {error.strerror or error}")
                continue
            result.files += 1
            result.bytes += count
            shown.update(count)
    result.seconds = time.monotonic() - started
    return result


def estimate_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if sys.platform != "linux" or not hasattr(os, "getxattr"):
        return 0  # no xattr call in Python's os elsewhere (the estimate only sizes a check)
    try:
        return int(float(os.getxattr(path, "user.idc.size_mb")) * 1e6)
    except OSError:
        return 0


def cache_size_of(mountpoint: Path) -> int:
    try:
        return int(mount_info(mountpoint).get("cache_size") or 0)
    except (MountError, ValueError):
        return 0


def collect_files(paths: list[Path], progress: Any) -> list[tuple[Path, int]]:
    """Every file under ``paths`` with its size (listing each series folder once). The
    ``.nifti`` folders of ``--volumes`` inside are left out: listing one builds its volume, a
    prefetch of DICOM must not start hundreds of builds (name a ``.nifti`` folder to get it)."""
    files: list[tuple[Path, int]] = []
    for path in paths:
        if path.is_file():
            files.append((path, path.stat().st_size))
            continue
        for folder, dirs, names in os.walk(path):
            dirs[:] = [name for name in dirs if series_folder_of(name) is None]
            for name in names:
                full = Path(folder) / name
                files.append((full, full.stat().st_size))
            progress(len(files))
    return files


def read_whole(path: Path) -> int:
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK):
            total += len(chunk)
    return total


def warm(paths: list[Path], jobs: int = 16, force: bool = False, quiet: bool = False) -> WarmResult:
    from tqdm import tqdm

    paths = [Path(os.path.abspath(p)) for p in paths]
    for path in paths:
        mountpoint = mount_of(path)
    estimate = sum(estimate_bytes(p) for p in paths)
    capacity = cache_size_of(mountpoint)
    if not force and capacity and estimate > capacity:
        raise MountError(
            f"about {binary_size(estimate)} would not fit in the mount's disk cache ({binary_size(capacity)}); "
            "choose fewer folders, mount with a larger --cache-size, or use --force"
        )
    started = time.monotonic()
    # Bars only for a person at a terminal; a cron job's log gets the one summary line below.
    no_bars = quiet or not sys.stderr.isatty()
    with tqdm(desc="listing", unit=" files", disable=no_bars, leave=False) as listing:
        files = collect_files(paths, lambda n: listing.update(n - listing.n))
    result = read_files(files, read_whole, jobs, tqdm, show_bar=not no_bars)
    result.seconds = time.monotonic() - started  # the listing included
    if not quiet:
        print(result.summary())
        for failure in result.failures[:20]:
            print(f"  failed: {failure}")
    return result
