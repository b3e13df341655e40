"""``idcfs cache info | clear``: what the cache folder holds, and emptying it safely.

Clearing goes through diskcache (not ``rm -r``), so a mount using the folder keeps working: it
simply fetches again what it no longer finds.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def cache_info(cache_dir: Path) -> list[tuple[str, str]]:
    import diskcache

    rows = [("cache folder", str(cache_dir))]
    blocks = cache_dir / "blocks"
    if (blocks / "cache.db").exists():
        with diskcache.Cache(str(blocks)) as cache:
            rows.append(
                ("blocks", f"{len(cache)} blocks, {cache.volume() / 1e6:.1f} MB of {cache.size_limit / 1e6:.0f} MB cap")
            )
    else:
        rows.append(("blocks", "none"))
    listings = cache_dir / "listings"
    if (listings / "cache.db").exists():
        with diskcache.Cache(str(listings)) as cache:
            rows.append(("series listings", f"{len(cache)}"))
    else:
        rows.append(("series listings", "none"))
    catalogs = cache_dir / "catalogs"
    snapshots = [p for p in catalogs.iterdir() if (p / "info.json").exists()] if catalogs.exists() else []
    rows.append(("catalog snapshots", f"{len(snapshots)}, {_folder_bytes(catalogs) / 1e6:.0f} MB"))
    log = cache_dir / "idcfs.log"
    if log.exists():
        rows.append(("log", str(log)))
    return rows


def cache_clear(cache_dir: Path) -> None:
    import diskcache

    for name in ("blocks", "listings"):
        folder = cache_dir / name
        if (folder / "cache.db").exists():
            with diskcache.Cache(str(folder)) as cache:
                cache.clear()
    shutil.rmtree(cache_dir / "catalogs", ignore_errors=True)  # mapped files stay valid for live mounts
