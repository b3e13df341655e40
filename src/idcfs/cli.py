"""``idcfs mount | umount``: argument parsing, logging, and wiring the parts together."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from idcfs import __version__
from idcfs.mounting import MountError
from idcfs.options import MOUNT_OPTIONS, add_options, default_cache_dir

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
  idcfs umount ~/idc

Every option can also be set with its IDCFS_* environment variable (the flag wins).
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
    add_options(mount)
    mount.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    versions = commands.add_parser(
        "versions",
        help="list the IDC releases the bundled index knows",
        description="List the IDC releases "
        "the bundled index describes, with their dates and series counts (for --idc-version).",
    )
    versions.add_argument("--index-file", default=None, help="index parquet (default: the bundled one)")

    umount = commands.add_parser(
        "umount",
        aliases=["unmount"],
        help="unmount an idcfs mount",
        description="Unmount an idcfs mount (also cleans up a stale one whose daemon died).",
    )
    umount.add_argument("mountpoint", type=Path)
    umount.add_argument("--lazy", action="store_true", help="detach now even if busy; clean up when no longer used")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "mount":
            return _mount(args)
        if args.command == "versions":
            return _versions(args)
        return _umount(args)
    except MountError as error:
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


def _umount(args: argparse.Namespace) -> int:
    from idcfs.mounting import unmount

    unmount(Path(os.path.realpath(args.mountpoint)), lazy=args.lazy)
    return 0


def _mount(args: argparse.Namespace) -> int:
    from idcfs.mounting import check_fuse_available, check_mountpoint, start_daemon

    args.mountpoint = args.mountpoint.absolute()
    args.cache_dir = Path(args.cache_dir).absolute() if args.cache_dir else default_cache_dir()
    for name in ("log_file", "index_file", "manifest"):
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).absolute()))
    if args.ready_fd is None:  # the command a user typed: check before anything slow
        check_mountpoint(args.mountpoint)
        check_fuse_available()
    if args.foreground or args.ready_fd is not None:
        return _serve(args)
    log_file = Path(args.log_file) if args.log_file else args.cache_dir / "idcfs.log"
    args.log_file = str(log_file)
    _make_private_dir(args.cache_dir)
    start_daemon(_child_argv(args), log_file, args.ready_timeout)
    return 0


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The parsed options as flags again, so the daemon sees exactly what this command saw."""
    argv = ["mount", str(args.mountpoint)]
    for option in MOUNT_OPTIONS:
        value = getattr(args, option.name)
        if option.name == "foreground":
            continue
        if option.kind == "bool":
            argv.append(option.flag if value else "--no-" + option.flag[2:])
        elif option.kind == "list":
            for item in value:
                argv += [option.flag, item]
        elif value is not None:
            argv += [option.flag, str(value)]
    return argv


def _make_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def _serve(args: argparse.Namespace) -> int:
    """Run the file system in this process until it is unmounted."""
    from idcfs.mounting import check_fuse_available, check_mountpoint, prefer_libfuse3, report_ready

    _setup_logging(args)
    ready_fd = args.ready_fd
    try:
        if ready_fd is not None:
            check_mountpoint(args.mountpoint)
            check_fuse_available()
            os.chdir("/")  # a daemon must not keep the caller's directory busy
        prefer_libfuse3()
        operations = _build_filesystem(args, on_ready=lambda: _announce_ready(args, ready_fd))
    except (MountError, ValueError, OSError) as error:
        log.error("%s", error)
        report_ready(ready_fd, f"ERROR {error}")
        return 1

    from idcfs.fs import KernelCachingFUSE

    fuse_options = {"ro": True, "fsname": "idcfs", "subtype": "idcfs"}
    if args.allow_other:
        fuse_options["allow_other"] = True
    try:
        KernelCachingFUSE(
            operations, str(args.mountpoint), foreground=True, nothreads=False, debug=False, **fuse_options
        )
    except RuntimeError as error:
        if not operations.ready:
            message = f"FUSE could not mount {args.mountpoint} (libfuse status {error}); see the log above"
            log.error("%s", message)
            report_ready(ready_fd, f"ERROR {message}")
            return 1
        # libfuse answers SIGTERM/SIGINT/SIGHUP by unmounting and returning status 8.
        log.info("stopped by a signal")
    log.info("unmounted %s", args.mountpoint)
    return 0


def _announce_ready(args: argparse.Namespace, ready_fd: int | None) -> None:
    from idcfs.mounting import report_ready

    log.info(
        "mounted %s (source %s%s)",
        args.mountpoint,
        args.source,
        f", endpoint {args.endpoint_url}" if args.endpoint_url else "",
    )
    report_ready(ready_fd)


def _build_filesystem(args: argparse.Namespace, on_ready):
    import pyarrow

    from idcfs.cache import BlockCache
    from idcfs.catalog import CatalogError, IndexFiles, Selection
    from idcfs.fs import IdcFs
    from idcfs.layout import TemplateError
    from idcfs.manifest import ManifestError, read_manifest
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
        snapshot = open_snapshot(files, args.layout, selection, args.cache_dir)
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
    cache = BlockCache(args.memory_cache_size)
    mount_info = {
        "idcfs": __version__,
        "idc_version": catalog.idc_version,
        "index": str(files.index),
        "index_latest_idc_version": catalog.info.get("latest_idc_version"),
        "layout": catalog.template.text,
        "selection": catalog.info.get("selection", {}),
        "series": catalog.num_series,
        "source": args.source,
        "endpoint_url": args.endpoint_url,
        "warnings": catalog.info.get("warnings", []),
    }
    return IdcFs(snapshot, store, cache, args.block_size, mount_info=mount_info, on_ready=on_ready)


def _release_freed_memory() -> None:
    """Give the catalog query's freed heap back to the OS (glibc keeps it otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.INFO
    handler: logging.Handler
    if args.log_file and not args.foreground:
        Path(args.log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(args.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s idcfs[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "gcsfs", "urllib3", "asyncio", "google"):
        logging.getLogger(noisy).setLevel(logging.INFO if args.debug else logging.WARNING)
    # mfusepy logs every expected errno (ENOENT, EROFS) with a traceback at DEBUG.
    logging.getLogger("mfusepy").setLevel(logging.INFO if not args.debug else logging.DEBUG)
