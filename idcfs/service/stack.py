"""The tree a face serves, built from the resolved options: catalog, store, block cache, reader,
listings and the :class:`~idcfs.vfs.vfs.Vfs` over them. The FUSE daemon uses it, and so does
every other face, so that the same options give the same tree, cache and behaviour.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idcfs.config.options import default_cache_size, default_memory_cache_size
from idcfs.service.heap import release_freed
from idcfs.service.mounting import MountError
from idcfs.version import __version__

if TYPE_CHECKING:
    from idcfs.blocks.disk_tier import DiskTier
    from idcfs.blocks.reader import Reader
    from idcfs.blocks.tiers import Tier
    from idcfs.catalog.index import Catalog, IndexFiles
    from idcfs.catalog.snapshot import Snapshot
    from idcfs.derived.volumes import Volumes
    from idcfs.remote.store import Store
    from idcfs.vfs.listing import SeriesListing
    from idcfs.vfs.listings import ListingCache
    from idcfs.vfs.vfs import Vfs

log = logging.getLogger("idcfs")


def probe_store(store: Store) -> str | None:
    """A quick look whether the store answers: a mount without a network still comes up (the
    cache may hold what the user needs), but says so, and starts in offline mode."""
    reason = store.probe()
    if reason is None:
        return None
    store.breaker.trip(reason)
    where = store.endpoint_url or ("S3" if store.source == "aws" else "Google Cloud Storage")
    return (
        f"{where} cannot be reached ({reason}); mounted offline: cached series can be read, "
        "anything else fails at once until the store answers again"
    )


def open_tree(args: argparse.Namespace, where: str | None = None) -> Vfs:
    """The catalog, the data path and the tree over them, as the (resolved) options say.

    ``where``: what serves it (a mount point, a URL), for ``/.idcfs/version`` and the stats.
    No thread is started here: a process may fork after this (the catalog is built in a forked
    child before anything else exists)."""
    from idcfs.vfs.vfs import Vfs

    files, snapshot = _open_catalog(args)
    store, reader, listings = _data_path(args)
    info = _tree_info(args, where, files, snapshot.tree.catalog, reader.cache.disk)
    # A third of --listing-cache-size for the entries of folders above the series level.
    return Vfs(snapshot, reader, listings, args.listing_cache_size // 3, info=info, volumes=_volumes(args, reader))


def _volumes(args: argparse.Namespace, reader: Reader) -> Volumes | None:
    """``--volumes``: its builds, kept in the disk cache (which it needs)."""
    if not getattr(args, "volumes", False):
        return None
    from idcfs.blocks.disk_tier import DiskTier
    from idcfs.derived.volumes import Volumes

    disk = reader.cache.disk
    if not isinstance(disk, DiskTier):
        raise MountError("--volumes keeps the volumes it builds in the disk cache: it needs one (--cache-size above 0)")
    return Volumes(reader, disk, args.cache_dir / "volumes", args.volume_timeout, args.volume_max_series)


def _open_catalog(args: argparse.Namespace) -> tuple[IndexFiles, Snapshot]:
    """The selected series, laid out: from its stored snapshot, or built (in a child) and stored."""
    import pyarrow

    from idcfs.catalog.index import CatalogError, IndexFiles, Selection
    from idcfs.catalog.layout import TemplateError
    from idcfs.catalog.manifest import ManifestError, read_manifest
    from idcfs.catalog.snapshot import open_snapshot

    # Arrow's default jemalloc pool keeps freed memory; the catalog query frees a lot of it.
    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    started = time.monotonic()
    try:
        files = IndexFiles.from_path(args.index_file) if args.index_file else IndexFiles.bundled()
        selection = Selection(
            collections=tuple(args.collection),
            modalities=tuple(args.modality),
            licenses=tuple(args.license),
            no_commercial_restrictions=args.no_commercial_restrictions,
            where=args.where,
            idc_version=args.idc_version,
            manifest=read_manifest(args.manifest) if args.manifest else None,
            allow_missing=args.allow_missing,
            shard=_shard(args.shard),
        )
        snapshot = open_snapshot(files, args.layout, selection, catalog_dir(args), build_apart=True)
    except (CatalogError, TemplateError, ManifestError) as error:
        raise MountError(str(error)) from None
    tree, catalog = snapshot.tree, snapshot.tree.catalog
    release_freed()
    for warning in catalog.info.get("warnings", []):
        log.warning("%s", warning)
    log.info(
        "catalog: %d series, %d top-level folders, IDC v%d, %s in %.2fs",
        catalog.num_series,
        tree.num_children(tree.root),
        catalog.idc_version,
        "built" if snapshot.built else f"loaded from {snapshot.folder}",
        time.monotonic() - started,
    )
    return files, snapshot


def catalog_dir(args: argparse.Namespace) -> Path:
    """Where built catalogs are kept: ``--catalog-dir``, else ``CACHE_DIR/catalogs``."""
    return Path(args.catalog_dir) if args.catalog_dir else args.cache_dir / "catalogs"


def _shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    part, count = text.split("/")
    return int(part), int(count)


def _data_path(args: argparse.Namespace) -> tuple[Store, Reader, ListingCache[SeriesListing]]:
    """Store, block cache and reader, and the listings cache, sized by the options."""
    from idcfs.blocks.buffers import new_buffer
    from idcfs.blocks.cache import BlockCache
    from idcfs.blocks.policy import PrefetchPolicy
    from idcfs.blocks.reader import Reader
    from idcfs.remote.policy import RetryPolicy
    from idcfs.remote.store import open_store
    from idcfs.vfs.listings import listing_cache

    store = open_store(
        args.source,
        args.endpoint_url,
        RetryPolicy(deadline=args.retry_deadline, attempt_timeout=min(args.request_timeout, args.retry_deadline)),
        allocate=new_buffer,
    )
    memory = args.memory_cache_size if args.memory_cache_size is not None else default_memory_cache_size()
    cache = BlockCache(memory, _disk_tier(args), wait_timeout=store.retry.longest_operation)
    policy = PrefetchPolicy(
        mode=args.prefetch,
        max_series_bytes=args.prefetch_max_series,
        workers=args.prefetch_workers,
        budget_bytes=min(256 << 20, max(memory // 2, 4 * args.block_size)),
    )
    reader = Reader(store, cache, args.block_size, policy)
    # Two thirds of --listing-cache-size for series listings (the rest: folder entries, see open_tree).
    listings = listing_cache(
        args.cache_dir / "listings", args.listing_cache_size * 2 // 3, wait_timeout=store.retry.longest_operation
    )
    return store, reader, listings


def _tree_info(
    args: argparse.Namespace, where: str | None, files: IndexFiles, catalog: Catalog, disk: Tier | None
) -> dict[str, Any]:
    """What ``/.idcfs/version`` says: what is served, from where, with which cache."""
    return {
        "idcfs": __version__,
        "mountpoint": where,
        "idc_version": catalog.idc_version,
        "index": str(files.index),
        "index_latest_idc_version": catalog.info.get("latest_idc_version"),
        "layout": catalog.template.text,
        "selection": catalog.info.get("selection", {}),
        "series": catalog.num_series,
        "source": args.source,
        "endpoint_url": args.endpoint_url,
        "cache_dir": str(args.cache_dir),
        "cache_size": disk.capacity if disk else 0,
        "block_size": args.block_size,
        "prefetch": args.prefetch,
        "warnings": catalog.info.get("warnings", []),
    }


def _disk_tier(args: argparse.Namespace) -> DiskTier | None:
    """The disk block cache, sized from --cache-size or the free space; None when off or unusable."""
    from idcfs.blocks.disk_tier import DiskTier

    folder = args.cache_dir / "blocks"
    size = args.cache_size
    if size is None:
        size = default_cache_size(args.cache_dir)
    if size <= 0:
        log.info("disk cache off")
        return None
    try:
        return DiskTier(folder, size)
    except Exception as error:  # noqa: BLE001 - a cache is an optimisation, never a reason not to mount
        log.warning("disk cache %s unusable (%s); reading from the network only", folder, error)
        return None
