"""The daemon: ``idcfs mount --foreground`` (what ``idcfs mount`` starts detached, and what
systemd runs) builds the file system from the options, mounts it and serves it until unmount.

Everything that owns a thread is made here, in the process that serves, after the catalog's
forked build: libfuse daemonizing by fork, or a fork after threads, would leave threads behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idcfs import __version__
from idcfs.heap import Trimmer, bound_heap, release_freed
from idcfs.mounting import MountError
from idcfs.options import default_cache_size

if TYPE_CHECKING:
    from idcfs.cache import ListingCache
    from idcfs.catalog import Catalog, IndexFiles
    from idcfs.disk_tier import DiskTier
    from idcfs.fs import IdcFs
    from idcfs.reader import Reader
    from idcfs.snapshot import Snapshot
    from idcfs.store import Store

log = logging.getLogger("idcfs")


def serve(args: argparse.Namespace) -> int:
    """Run the file system in this process until it is unmounted."""
    from idcfs.logs import handle_sighup, setup_logging
    from idcfs.mounting import check_fuse_available, check_mountpoint, prefer_libfuse3

    setup_logging(args.log_level, args.log_file, args.debug)
    bound_heap()
    handle_sighup()  # before any thread starts
    # FUSE threads answer the kernel while prefetch threads parse responses; the default 5 ms
    # GIL switch interval would make a cached read wait behind that work.
    sys.setswitchinterval(0.0005)
    ready_fd = args.ready_fd
    try:
        if ready_fd is not None:
            check_mountpoint(args.mountpoint)
            check_fuse_available()
            os.chdir("/")  # a daemon must not keep the caller's directory busy
        prefer_libfuse3()
        # (``operations`` is bound by the time libfuse calls init, which calls on_ready.)
        operations = _build_filesystem(args, on_ready=lambda: _announce_ready(args, ready_fd, operations.answering))
        args.offline_warning = _probe_store(operations.store)
        metrics = None
        if args.metrics_port is not None:
            from idcfs.metrics import MetricsServer

            metrics = MetricsServer(args.metrics_port, operations.collect_stats)
    except (MountError, ValueError, OSError) as error:
        _startup_failed(str(error), ready_fd)
        return 1

    import mfusepy

    from idcfs.fs import DirectIoFUSE
    from idcfs.notify import sd_notify
    from idcfs.transport import RECYCLED

    if metrics is not None:
        metrics.start()
    # After the catalog's forked build: no thread may exist across a fork.
    trimmer = Trimmer(also=(RECYCLED.release_idle,))
    trimmer.start()
    # max_threads: libfuse's default is 10 threads answering the kernel, and mfusepy passes an
    # invalid value that libfuse ignores with a warning. Reads that wait on the network (a stall,
    # a retry) each hold a thread; with 10, a few slow objects stall every other reader.
    fuse_options: dict[str, Any] = {"ro": True, "fsname": "idcfs", "subtype": "idcfs"}
    if (mfusepy.fuse_version_major, mfusepy.fuse_version_minor) >= (3, 12):  # older ones refuse these
        # max_idle_threads too: its default (-1) is what libfuse warns about at every mount.
        fuse_options.update(max_threads=FUSE_THREADS, max_idle_threads=FUSE_IDLE_THREADS)
    if args.allow_other:
        fuse_options["allow_other"] = True
    for flag in filter(None, args.kernel_flags.split(",")):
        fuse_options[flag] = True
    try:
        DirectIoFUSE(operations, str(args.mountpoint), foreground=True, nothreads=False, debug=False, **fuse_options)
    except RuntimeError as error:
        if not operations.ready:
            message = f"FUSE could not mount {args.mountpoint} (libfuse status {error}); see the log above"
            _startup_failed(message, ready_fd)
            return 1
        # libfuse answers SIGTERM and SIGINT by unmounting and returning status 8.
        log.info("stopped by a signal")
    finally:
        trimmer.close()
        if metrics is not None:
            metrics.close()
    sd_notify("STOPPING=1", f"STATUS=unmounted {args.mountpoint}")
    log.info("unmounted %s", args.mountpoint)
    return 0


#: How long the readahead setting is watched for the kernel's INIT to lower it, at most (seconds).
READAHEAD_SETTLE = 10.0
#: Threads libfuse may run to answer the kernel (each a Python thread mostly waiting on I/O).
FUSE_THREADS = 64
#: Of those, how many may wait idle for the kernel's next request.
FUSE_IDLE_THREADS = 16


def _startup_failed(message: str, ready_fd: int | None) -> None:
    """Tell whoever waits (``idcfs mount``, or systemd) why the mount did not come up."""
    from idcfs.mounting import report_ready
    from idcfs.notify import sd_notify

    log.error("%s", message)
    report_ready(ready_fd, f"ERROR {message}")
    sd_notify(f"STATUS=failed: {message.splitlines()[0] if message else ''}")


def _announce_ready(args: argparse.Namespace, ready_fd: int | None, answering: threading.Event) -> None:
    """The mount answers: release ``idcfs mount`` (the pipe) or systemd (``READY=1``)."""
    from idcfs.mounting import report_ready
    from idcfs.notify import sd_notify

    log.info(
        "mounted %s (source %s%s)",
        args.mountpoint,
        args.source,
        f", endpoint {args.endpoint_url}" if args.endpoint_url else "",
    )
    if args.kernel_readahead:
        threading.Thread(
            target=_set_kernel_readahead,
            args=(args.mountpoint, args.kernel_readahead, answering),
            name="idcfs-readahead",
        ).start()
    warning = getattr(args, "offline_warning", None)
    report_ready(ready_fd, f"READY {warning}" if warning else "READY")
    sd_notify("READY=1", f"STATUS=mounted {args.mountpoint} (IDC from {args.source})", f"MAINPID={os.getpid()}")


def _set_kernel_readahead(mountpoint: Path, nbytes: int, answering: threading.Event) -> None:
    """Raise the mount's readahead once the kernel has taken libfuse's answer to INIT, which
    lowers it to what the kernel offered (128 KiB) whenever it is processed after our write: and
    that answer goes out after the ``init`` callback that starts this. Read back as set is not
    enough, then; set and held once the mount has answered a request (the kernel sends none
    before INIT is done), or for ``READAHEAD_SETTLE`` seconds when nothing asks."""
    from idcfs.mounting import kernel_readahead, set_kernel_readahead

    wanted = max(0, nbytes) // 1024 * 1024
    problem = None
    deadline = time.monotonic() + READAHEAD_SETTLE
    while time.monotonic() < deadline:
        time.sleep(0.05)  # a steady pace, whether or not the mount has answered yet
        answered = answering.is_set()
        if kernel_readahead(mountpoint) == wanted:
            if answered:
                log.debug("kernel readahead of %s: %d KiB", mountpoint, nbytes // 1024)
                return
            continue
        problem = set_kernel_readahead(mountpoint, nbytes)
        if problem is not None and answered:
            break
    if problem is not None:
        log.log(logging.INFO if os.getuid() == 0 else logging.DEBUG, "kernel readahead left as it is: %s", problem)


def _probe_store(store: Store) -> str | None:
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


def _build_filesystem(args: argparse.Namespace, on_ready: Callable[[], None]) -> IdcFs:
    """The catalog, the data path and the FUSE operations over them, as the options say."""
    from idcfs.fs import IdcFs

    files, snapshot = _open_catalog(args)
    store, reader, listings = _data_path(args)
    mount_info = _mount_info(args, files, snapshot.tree.catalog, reader.cache.disk)
    # A third of --listing-cache-size for the entries of folders above the series level.
    return IdcFs(snapshot, reader, listings, args.listing_cache_size // 3, mount_info=mount_info, on_ready=on_ready)


def _open_catalog(args: argparse.Namespace) -> tuple[IndexFiles, Snapshot]:
    """The selected series, laid out: from its stored snapshot, or built (in a child) and stored."""
    import pyarrow

    from idcfs.catalog import CatalogError, IndexFiles, Selection
    from idcfs.layout import TemplateError
    from idcfs.manifest import ManifestError, read_manifest
    from idcfs.snapshot import open_snapshot

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
        snapshot = open_snapshot(files, args.layout, selection, args.cache_dir, build_apart=True)
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


def _shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    part, count = text.split("/")
    return int(part), int(count)


def _data_path(args: argparse.Namespace) -> tuple[Store, Reader, ListingCache]:
    """Store, block cache and reader, and the listings cache, sized by the options."""
    from idcfs.cache import BlockCache
    from idcfs.fs import listing_cache
    from idcfs.reader import PrefetchPolicy, Reader
    from idcfs.store import RetryPolicy, Store

    store = Store(
        args.source,
        args.endpoint_url,
        RetryPolicy(deadline=args.retry_deadline, attempt_timeout=min(args.request_timeout, args.retry_deadline)),
    )
    cache = BlockCache(args.memory_cache_size, _disk_tier(args), wait_timeout=store.retry.longest_operation)
    policy = PrefetchPolicy(
        mode=args.prefetch,
        max_series_bytes=args.prefetch_max_series,
        workers=args.prefetch_workers,
        budget_bytes=min(256 << 20, max(args.memory_cache_size // 2, 4 * args.block_size)),
    )
    reader = Reader(store, cache, args.block_size, policy)
    # Two thirds of --listing-cache-size for series listings (the rest: folder entries, see _build_filesystem).
    listings = listing_cache(
        args.cache_dir / "listings", args.listing_cache_size * 2 // 3, wait_timeout=store.retry.longest_operation
    )
    return store, reader, listings


def _mount_info(args: argparse.Namespace, files: IndexFiles, catalog: Catalog, disk: DiskTier | None) -> dict[str, Any]:
    """What ``/.idcfs/version`` says: what is mounted, from where, with which cache."""
    return {
        "idcfs": __version__,
        "mountpoint": str(args.mountpoint),
        "idc_version": catalog.idc_version,
        "index": str(files.index),
        "index_latest_idc_version": catalog.info.get("latest_idc_version"),
        "layout": catalog.template.text,
        "selection": catalog.info.get("selection", {}),
        "series": catalog.num_series,
        "source": args.source,
        "endpoint_url": args.endpoint_url,
        "cache_dir": str(args.cache_dir),
        "cache_size": disk.size_limit if disk else 0,
        "block_size": args.block_size,
        "prefetch": args.prefetch,
        "warnings": catalog.info.get("warnings", []),
    }


def _disk_tier(args: argparse.Namespace) -> DiskTier | None:
    """The disk block cache, sized from --cache-size or the free space; None when off or unusable."""
    from idcfs.disk_tier import DiskTier

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
