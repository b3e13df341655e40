"""``idcfs mount | umount``: argument parsing, logging, and wiring the parts together."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from idcfs import __version__
from idcfs.config import ConfigError, as_flags, resolve
from idcfs.mounting import MountError
from idcfs.options import MOUNT_OPTIONS, add_options, default_cache_dir, default_cache_size

log = logging.getLogger("idcfs")

DESCRIPTION = """\
idcfs presents the NCI Imaging Data Commons (IDC) as a read-only directory tree,
collection/patient/study/series/instance.dcm, fetching file contents lazily from
the public IDC buckets on AWS S3 or Google Cloud Storage (anonymous, no account).
"""

MOUNT_EPILOG = """\
examples:
  idcfs mount ~/idc                         # the current IDC release, from AWS
  idcfs mount ~/idc --source gcs            # the same, from Google Cloud Storage
  idcfs mount ./mnt --endpoint-url http://127.0.0.1:9000   # a local S3-compatible server
  idcfs mount /mnt/idc -o source=gcs,cache_size=20G,allow_other   # mount(8)-style options
  idcfs mount /mnt/idc --config /etc/idcfs/mnt-idc.toml             # options from a TOML file
  idcfs umount ~/idc

Every option is also a -o key=value mount option, a key of the --config TOML file and an
IDCFS_* environment variable. Precedence: flags > -o > environment > config file > defaults.
The tree is %collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID,
as an idc-index download lays it out; series folders hold <crdc_instance_uuid>.dcm files.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idcfs", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"idcfs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    mount = commands.add_parser(
        "mount",
        help="mount IDC on a directory",
        description=DESCRIPTION,
        epilog=MOUNT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mount.add_argument("mountpoint", type=Path, help="an existing, empty directory")
    mount.add_argument(
        "-o",
        dest="mount_options",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="options as mount(8) passes them from fstab: any option below by its key (cache_size=20G), "
        "a bare key for true (allow_other); generic ones (_netdev, nofail, ro, x-systemd.*) are ignored, "
        "nosuid/nodev/noexec/noatime go to the kernel. Repeatable.",
    )
    add_options(mount)
    mount.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    mount.add_argument("--sloppy", action="store_true", help=argparse.SUPPRESS)
    mount.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    mount.add_argument("--kernel-flags", default="", help=argparse.SUPPRESS)

    stats = commands.add_parser(
        "stats",
        help="show a mount's live statistics",
        description="Print a mount's live statistics (requests, bytes, cache hits, prefetch, "
        "latency, errors) from MOUNTPOINT/.idcfs/stats.",
    )
    stats.add_argument("mountpoint", type=Path)
    stats.add_argument("--json", action="store_true", help="print the raw JSON")
    stats.add_argument(
        "--watch",
        type=float,
        default=None,
        metavar="SECONDS",
        help="print again every SECONDS, with rates since the last print (Ctrl-C to stop)",
    )

    versions = commands.add_parser(
        "versions",
        help="list the IDC releases the bundled index knows",
        description="List the IDC releases "
        "the bundled index describes, with their dates and series counts (for --idc-version).",
    )
    versions.add_argument("--index-file", default=None, help="index parquet (default: the bundled one)")

    prefetch = commands.add_parser(
        "prefetch",
        help="warm the cache for folders of a mount",
        description="Read folders of a mount (a collection, patient, study or series) into the mount's "
        "cache ahead of use, with a progress bar and a summary.",
    )
    prefetch.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="folders or files inside a mount")
    prefetch.add_argument("--jobs", type=int, default=16, help="files read in parallel (default: 16)")
    prefetch.add_argument("--force", action="store_true", help="even if it exceeds the disk cache's size")
    prefetch.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    cache = commands.add_parser(
        "cache", help="show or clear the cache folder", description="Show what the cache folder holds, or clear it."
    )
    cache.add_argument("action", choices=("info", "clear"))
    cache.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="the cache folder (default: $IDCFS_CACHE_DIR or $XDG_CACHE_HOME/idcfs)",
    )

    umount = commands.add_parser(
        "umount",
        aliases=["unmount"],
        help="unmount an idcfs mount",
        description="Unmount an idcfs mount (also cleans up a stale one whose daemon died).",
    )
    umount.add_argument("mountpoint", type=Path)
    umount.add_argument("--lazy", action="store_true", help="detach now even if busy; clean up when no longer used")
    return parser


COMMANDS = {"mount", "umount", "unmount", "versions", "prefetch", "cache", "stats"}


def main(argv: list[str] | None = None) -> int:
    from idcfs.helper import helper_argv, is_helper_call

    argv = sys.argv[1:] if argv is None else argv
    try:
        if is_helper_call(argv, COMMANDS):  # mount.fuse3 running an fstab line's fuse.idcfs
            argv = helper_argv(argv)
        args = build_parser().parse_args(argv)
        if args.command == "mount":
            return _mount(args)
        if args.command == "versions":
            return _versions(args)
        if args.command == "prefetch":
            return _prefetch(args)
        if args.command == "cache":
            return _cache(args)
        if args.command == "stats":
            return _stats(args)
        return _umount(args)
    except (MountError, ConfigError) as error:
        print(f"idcfs: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _versions(args: argparse.Namespace) -> int:
    from idcfs.catalog import CatalogError, IndexFiles, release_versions

    try:
        files = IndexFiles.from_path(args.index_file) if args.index_file else IndexFiles.bundled()
        rows = release_versions(files)
    except CatalogError as error:
        raise MountError(str(error)) from None
    print(f"{'version':>7}  {'released':10}  {'series':>9}")
    for version, date, count in rows:
        print(f"{version:>7}  {date:10}  {count:>9,}")
    return 0


def _prefetch(args: argparse.Namespace) -> int:
    from idcfs.warm import warm

    result = warm(args.paths, jobs=args.jobs, force=args.force, quiet=args.quiet)
    return 1 if result.failures else 0


def _cache(args: argparse.Namespace) -> int:
    from idcfs.cache_admin import cache_clear, cache_info

    folder = args.cache_dir or Path(os.environ.get("IDCFS_CACHE_DIR") or default_cache_dir())
    if args.action == "clear":
        cache_clear(folder)
        print(f"cleared {folder}")
        return 0
    for name, value in cache_info(folder):
        print(f"{name:18} {value}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from idcfs.stats import format_table, read_stats

    stats = read_stats(args.mountpoint)
    if args.json:
        import json

        print(json.dumps(stats, indent=1))
        return 0
    print(format_table(stats))
    if args.watch is None:
        return 0
    from idcfs.stats import format_rates

    while True:
        time.sleep(max(0.1, args.watch))
        previous, stats = stats, read_stats(args.mountpoint)
        print("\n" + format_table(stats) + "\n" + format_rates(previous, stats), flush=True)


def _umount(args: argparse.Namespace) -> int:
    from idcfs.mounting import unmount

    unmount(Path(os.path.realpath(args.mountpoint)), lazy=args.lazy)
    return 0


def _resolve_options(args: argparse.Namespace) -> None:
    """Fill ``args`` with every option's value from the flags, -o, environment, file, defaults."""
    given = {option.name: getattr(args, option.name) for option in MOUNT_OPTIONS if hasattr(args, option.name)}
    values, dash_o = resolve(given, args.mount_options, sloppy=args.sloppy)
    for name, value in values.items():
        setattr(args, name, value)
    flags = [flag for flag in args.kernel_flags.split(",") if flag]
    args.kernel_flags = ",".join(dict.fromkeys([*flags, *dash_o.kernel_flags]))
    if args.debug:
        args.log_level = "debug"


def _mount(args: argparse.Namespace) -> int:
    from idcfs.mounting import check_fuse_available, check_mountpoint, start_daemon

    _resolve_options(args)
    args.mountpoint = args.mountpoint.absolute()
    args.cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()  # paths: absolute already
    if args.ready_fd is None:  # the command a user typed: check before anything slow
        check_mountpoint(args.mountpoint)
        check_fuse_available()
    if args.dry_run:
        return 0
    usable = _make_private_dir(args.cache_dir)
    if args.foreground or args.ready_fd is not None:
        return _serve(args)
    if args.log_file:
        log_file = Path(args.log_file)
    elif usable:
        log_file = args.cache_dir / "idcfs.log"
    else:
        log_file = Path(tempfile.gettempdir()) / f"idcfs-{os.getuid()}" / "idcfs.log"
    args.log_file = str(log_file)
    start_daemon(_child_argv(args), log_file, args.ready_timeout)
    return 0


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The resolved options as flags again, so the daemon sees exactly what this command saw."""
    argv = ["mount", str(args.mountpoint), *as_flags(vars(args))]
    if args.kernel_flags:
        argv += ["--kernel-flags", args.kernel_flags]
    return argv


def _make_private_dir(path: Path) -> bool:
    """Create the cache folder; a folder that cannot be made only costs the cache (one warning)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o700)  # blocks of what a user reads are nobody else's business
        return os.access(path, os.W_OK)
    except OSError as error:
        print(
            f"idcfs: warning: cache folder {path} is unusable ({error.strerror}); mounting without a disk cache",
            file=sys.stderr,
        )
        return False


def _serve(args: argparse.Namespace) -> int:
    """Run the file system in this process until it is unmounted."""
    from idcfs.logs import handle_sighup, setup_logging
    from idcfs.mounting import check_fuse_available, check_mountpoint, prefer_libfuse3

    setup_logging(args.log_level, args.log_file, args.debug)
    _bound_heap()
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
        operations = _build_filesystem(args, on_ready=lambda: _announce_ready(args, ready_fd))
        args.offline_warning = _probe_store(operations.store)
        metrics = None
        if args.metrics_port is not None:
            from idcfs.stats import MetricsServer

            metrics = MetricsServer(args.metrics_port, operations.collect_stats)
    except (MountError, ValueError, OSError) as error:
        _startup_failed(str(error), ready_fd)
        return 1

    import mfusepy

    from idcfs.fs import DirectIoFUSE
    from idcfs.notify import sd_notify

    if metrics is not None:
        metrics.start()
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
        if metrics is not None:
            metrics.close()
    sd_notify("STOPPING=1", f"STATUS=unmounted {args.mountpoint}")
    log.info("unmounted %s", args.mountpoint)
    return 0


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


def _announce_ready(args: argparse.Namespace, ready_fd: int | None) -> None:
    """The mount answers: release ``idcfs mount`` (the pipe) or systemd (``READY=1``)."""
    from idcfs.mounting import report_ready
    from idcfs.notify import sd_notify

    log.info(
        "mounted %s (source %s%s)",
        args.mountpoint,
        args.source,
        f", endpoint {args.endpoint_url}" if args.endpoint_url else "",
    )
    warning = getattr(args, "offline_warning", None)
    report_ready(ready_fd, f"READY {warning}" if warning else "READY")
    sd_notify("READY=1", f"STATUS=mounted {args.mountpoint} (IDC from {args.source})", f"MAINPID={os.getpid()}")


def _probe_store(store) -> str | None:
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


def _build_filesystem(args: argparse.Namespace, on_ready):
    import pyarrow

    from idcfs.cache import BlockCache
    from idcfs.catalog import CatalogError, IndexFiles, Selection
    from idcfs.fs import IdcFs, listing_cache
    from idcfs.layout import TemplateError
    from idcfs.manifest import ManifestError, read_manifest
    from idcfs.reader import PrefetchPolicy, Reader
    from idcfs.snapshot import open_snapshot
    from idcfs.store import RetryPolicy, Store

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
        )
        snapshot = open_snapshot(files, args.layout, selection, args.cache_dir, build_apart=True)
    except (CatalogError, TemplateError, ManifestError) as error:
        raise MountError(str(error)) from None
    tree, catalog = snapshot.tree, snapshot.tree.catalog
    _release_freed_memory()
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
    store = Store(
        args.source,
        args.endpoint_url,
        RetryPolicy(deadline=args.retry_deadline, attempt_timeout=min(args.request_timeout, args.retry_deadline)),
    )
    disk = _disk_tier(args)
    cache = BlockCache(args.memory_cache_size, disk, wait_timeout=store.retry.longest_operation)
    policy = PrefetchPolicy(
        mode=args.prefetch,
        max_series_bytes=args.prefetch_max_series,
        workers=args.prefetch_workers,
        budget_bytes=min(256 << 20, max(args.memory_cache_size // 2, 4 * args.block_size)),
    )
    reader = Reader(store, cache, args.block_size, policy)
    listings = listing_cache(
        args.cache_dir / "listings", args.listing_cache_size * 2 // 3, wait_timeout=store.retry.longest_operation
    )
    mount_info = {
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
    return IdcFs(
        snapshot, reader, listings, mount_info=mount_info, on_ready=on_ready, entries_bytes=args.listing_cache_size // 3
    )


def _disk_tier(args: argparse.Namespace):
    """The disk block cache, sized from --cache-size or the free space; None when off or unusable."""
    from idcfs.cache import DiskTier

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


def _bound_heap() -> None:
    """Keep glibc from hoarding the blocks' memory: with a dynamic mmap threshold, a freed 1 MiB
    block raises it, later blocks come from per-thread arenas (64 FUSE threads, 16 fetchers),
    and freed ones stay there: the soak saw RSS creep 250 MB over 15 minutes with a 16 MB block
    cache. A fixed threshold maps every block on its own and unmaps it when freed."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 10)  # M_MMAP_THRESHOLD (fixed: no dynamic raise)
        libc.mallopt(-8, 4)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _release_freed_memory() -> None:
    """Give the catalog query's freed heap back to the OS (glibc keeps it otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
