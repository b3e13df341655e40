"""``idcfs cache info | clear``: what the cache folder holds, and emptying it safely.

Clearing goes through each store's own index (not ``rm -r``), so a mount using the folder keeps
working: it simply fetches again what it no longer finds. Catalog snapshots are kept unless asked
for: they hold nothing fetched, and rebuilding one costs the next mount seconds of start-up.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from idcfs.util.sizes import binary_size


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def cache_info(cache_dir: Path) -> list[tuple[str, str]]:
    import diskcache

    from idcfs.blocks import disk_tier

    rows = [("cache folder", str(cache_dir))]
    blocks = disk_tier.summary(cache_dir / "blocks")
    if blocks is not None:
        count, stored, cap = blocks
        of_cap = "" if cap is None else f" of {binary_size(cap)} cap"
        rows.append(("blocks", f"{count} blocks, {binary_size(stored)}{of_cap}"))
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
    rows.append(("catalog snapshots", f"{len(snapshots)}, {binary_size(_folder_bytes(catalogs))}"))
    log = cache_dir / "idcfs.log"
    if log.exists():
        rows.append(("log", str(log)))
    return rows


def cache_clear(cache_dir: Path, catalogs: bool = False) -> None:
    """Empty the blocks and listings; the catalog snapshots too when ``catalogs``."""
    import diskcache

    from idcfs.blocks import disk_tier

    disk_tier.clear(cache_dir / "blocks")
    listings = cache_dir / "listings"
    if (listings / "cache.db").exists():
        with diskcache.Cache(str(listings)) as cache:
            cache.clear()
    if catalogs:
        shutil.rmtree(cache_dir / "catalogs", ignore_errors=True)  # mapped files stay valid for live mounts
