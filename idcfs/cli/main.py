"""The ``idcfs`` command: its subcommands (mount, umount, path, stats, prefetch, cache, versions), their
arguments and messages; the work is done by the parts they call."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from idcfs.cli.helper import helper_argv, is_helper_call
from idcfs.config.options import (
    MOUNT_OPTIONS,
    SERVE_FLAGS,
    add_options,
    default_cache_dir,
    parse_seconds,
    serve_variable,
)
from idcfs.config.sources import ConfigError, as_flags, resolve, tree_namespace
from idcfs.service.mounting import NO_MOUNT_ON_WINDOWS, MountError, current_uid
from idcfs.util.suggest import did_you_mean
from idcfs.version import __version__

log = logging.getLogger("idcfs")

DESCRIPTION = """\
idcfs presents the NCI Imaging Data Commons (IDC) as a read-only directory tree,
collection/patient/study/series/instance.dcm, fetching file contents lazily from
the public IDC buckets on AWS S3 or Google Cloud Storage (anonymous, no account).
"""

MOUNT_EPILOG = """\
Every option is also a -o key=value mount option, a key of the --config TOML file and an
IDCFS_* environment variable. Precedence: flags > -o > environment > config file > defaults.
The tree is %collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID,
as an idc-index download lays it out; series folders hold <crdc_instance_uuid>.dcm files.
README.md has more: fstab and systemd, a cluster, idc:// without FUSE.

examples:
  idcfs mount ~/idc                                   # the current IDC release, from AWS
  idcfs mount ~/idc --source gcs --collection nlst    # one collection, from Google Cloud Storage
  idcfs mount /mnt/idc -o cache_size=20G,allow_other  # mount(8)-style options; idcfs umount /mnt/idc
"""


SERVE_EPILOG = """\
Selection, release, source and cache options are the mount's (see idcfs mount --help); a
cache folder may be shared with mounts and idc:// at the same time.

examples:
  idcfs serve --collection nlst                       # http://127.0.0.1:8080/ on this machine
  idcfs serve --listen 0.0.0.0:8443 --auth users.txt --tls-cert cert.pem --tls-key key.pem
  curl -r 0-131 http://127.0.0.1:8080/nlst/100002/   # an HTML listing; files answer ranges
  idcfs serve --dicomweb --cors-origin http://localhost:3000   # DICOMweb at /dicomweb for a viewer
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

    serve = commands.add_parser(
        "serve",
        help="serve IDC as a read-only WebDAV share (Finder, Explorer, davfs2, rclone, curl)",
        description="Serve the tree over WebDAV, read-only, through the same cache as a mount: macOS "
        "Finder (Go > Connect to Server), Windows Explorer (Map network drive), davfs2, rclone and curl "
        "read it with no FUSE or kernel extension. Loopback only unless --listen names another address, "
        "which then needs --auth (and should have --tls-cert/--tls-key).",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, kind, default, metavar, help_text in SERVE_FLAGS:
        value = os.environ.get(serve_variable(flag)) or default
        serve.add_argument(
            flag,
            type=kind,
            default=value,  # a string: argparse converts it as if given, and says what is wrong
            metavar=metavar,
            help=f"{help_text} [env {serve_variable(flag)}]" + (f" (default: {default})" if default else ""),
        )
    serve.add_argument(
        "--dicomweb",
        action="store_true",
        default=os.environ.get("IDCFS_DICOMWEB", "") not in ("", "0", "false"),
        help="also answer DICOMweb (QIDO-RS searches, WADO-RS retrievals) under /dicomweb, for OHIF, "
        "Slim, 3D Slicer, wsidicom and dicomweb-client [env IDCFS_DICOMWEB=1]",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://viewer.example.org) whose pages may call /dicomweb from a browser; "
        "repeat for several; none by default",
    )
    add_options(serve, tuple(option for option in MOUNT_OPTIONS if option.name not in MOUNT_ONLY))

    stats = commands.add_parser(
        "stats",
        help="show a mount's live statistics",
        description="Print a mount's live statistics (requests, bytes, cache hits, prefetch, "
        "latency, errors) from MOUNTPOINT/.idcfs/stats, or an idcfs serve's from its URL.",
    )
    stats.add_argument(
        "mountpoint",
        metavar="PATH|URL",
        help="the mount point, any path inside the mount, or idcfs serve's URL (http://127.0.0.1:8080)",
    )
    stats.add_argument("--json", action="store_true", help="print the raw JSON")
    stats.add_argument(
        "--watch",
        type=parse_seconds,
        default=None,
        metavar="SECONDS",
        help="print again every SECONDS (more than 0), with rates since the last print (Ctrl-C to stop)",
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
        "cache",
        help="show or clear the cache folder",
        description="Show what the cache folder holds, or clear its blocks and series listings (a "
        "mount using it keeps working, and fetches again what it no longer finds). Catalog snapshots "
        "are kept (the next mount would rebuild one, for seconds) unless --catalogs is given.",
    )
    cache.add_argument("action", metavar="{info,clear}", help="info: what it holds; clear: empty it")
    cache.add_argument(
        "--catalogs", action="store_true", help="clear: the catalog snapshots too (rebuilt at the next mount)"
    )
    cache.add_argument(
        "mount",
        type=Path,
        nargs="?",
        default=None,
        metavar="MOUNT",
        help="a mount (or any path in it): its cache folder, whatever it was mounted with",
    )
    cache.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="the cache folder (default: MOUNT's, else $IDCFS_CACHE_DIR or $XDG_CACHE_HOME/idcfs)",
    )

    path = commands.add_parser(
        "path",
        help="print the folders of series, studies or patients in a mount",
        description="Print the folder(s) that each identifier has in a mount, in the mount's layout and\n"
        "selection: a SeriesInstanceUID or crdc_series_uuid gives its series folder, a StudyInstanceUID\n"
        "or PatientID the study or patient folder (the kind is detected). Answered from the mount's\n"
        "catalog, with no network. Identifiers the mount does not hold are named on stderr, and the\n"
        "exit status is 1.",
        epilog='example:\n  cd "$(idcfs path ~/idc 1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192)"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    path.add_argument("mountpoint", type=Path, metavar="MOUNT", help="the mount point, or any path inside it")
    path.add_argument(
        "ids", nargs="+", metavar="ID", help="SeriesInstanceUID, StudyInstanceUID, PatientID or crdc_series_uuid"
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


COMMANDS = {"mount", "umount", "unmount", "versions", "prefetch", "cache", "stats", "path", "serve"}

#: Options of the mount that mean nothing to a server (the kernel's, the daemon's handshake).
MOUNT_ONLY = {"allow_other", "kernel_readahead", "foreground", "ready_timeout"}
CACHE_ACTIONS = ("info", "clear")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse like argparse, but an unknown flag is reported by its own command's parser (its
    usage, not the top level's) with the nearest flag that command knows."""
    args, unknown = parser.parse_known_args(argv)
    command = _subparsers(parser).get(args.command, parser)
    if args.command == "cache" and args.action not in CACHE_ACTIONS:
        command.error(f"unknown action {args.action!r}{did_you_mean(args.action, list(CACHE_ACTIONS))}")
    if not unknown:
        return args
    flags = [flag for action in command._actions for flag in action.option_strings if flag.startswith("--")]
    words = [word for word in unknown if word.startswith("-")]
    hint = did_you_mean(words[0].split("=")[0], flags, quote=False) if words else ""
    command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    raise AssertionError("unreachable")  # error() exits


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def mount_helper_main() -> int:
    """The ``mount.idcfs`` program: mount(8)'s call (``mount.idcfs DEVICE DIR -o ...``)."""
    try:
        argv = helper_argv(sys.argv[1:])
    except ConfigError as error:
        print(f"idcfs: error: {error}", file=sys.stderr)
        return 1
    return main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if is_helper_call(argv, COMMANDS):  # mount.fuse3 running an fstab line's fuse.idcfs
            argv = helper_argv(argv)
        elif argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
            hint = did_you_mean(argv[0], sorted(COMMANDS))
            build_parser().print_usage(sys.stderr)
            print(f"idcfs: error: unknown command {argv[0]!r}{hint}; see: idcfs --help", file=sys.stderr)
            return 2
        args = _parse(build_parser(), argv)
        if args.command == "mount":
            return _mount(args)
        if args.command == "versions":
            return _versions(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "prefetch":
            return _prefetch(args)
        if args.command == "cache":
            return _cache(args)
        if args.command == "stats":
            return _stats(args)
        if args.command == "path":
            return _path(args)
        return _umount(args)
    except (MountError, ConfigError) as error:
        print(f"idcfs: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `idcfs stats --watch 2 | head`: the reader has gone, so are we
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not fail again
        return 0


def _serve(args: argparse.Namespace) -> int:
    from idcfs.service.logs import setup_logging
    from idcfs.service.stack import open_tree
    from idcfs.webdav.server import Extension, ServeError, check_client_timeout, parse_listen, read_users, serve

    options = tree_namespace({o.name: getattr(args, o.name) for o in MOUNT_OPTIONS if hasattr(args, o.name)})
    try:
        host, port = parse_listen(args.listen)
        users = read_users(args.auth) if args.auth is not None else None
        check_client_timeout(args.client_timeout)
        if (args.tls_cert is None) != (args.tls_key is None):
            raise ServeError("--tls-cert and --tls-key go together")
        tls = (args.tls_cert, args.tls_key) if args.tls_cert is not None and args.tls_key is not None else None
        setup_logging(options.log_level, options.log_file, options.debug)
        _make_private_dir(options.cache_dir)
        vfs = open_tree(options, where=f"http://{args.listen}")
        extension = None
        try:
            if args.dicomweb:
                from idcfs.dicomweb.app import middleware

                extension = Extension(*middleware(vfs, _origins(args.cors_origin)))
            elif args.cors_origin:
                raise ServeError("--cors-origin is for --dicomweb")
            serve(
                vfs, host, port, users, tls, on_ready=_say_serving, client_timeout=args.client_timeout,
                extension=extension,
            )  # fmt: skip
        finally:
            if extension is not None:
                extension.close()
            vfs.close()
    except ServeError as error:
        raise ConfigError(str(error)) from None
    except OSError as error:  # the address in use, a TLS file unreadable
        raise ConfigError(f"cannot serve on {args.listen}: {error.strerror or error}") from None
    return 0


def _origins(given: list[str]) -> list[str]:
    """Web origins as a browser sends them (``scheme://host[:port]``, no path); else an error."""
    from urllib.parse import urlsplit

    origins = []
    for origin in given:
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
            raise ConfigError(
                f"--cors-origin {origin!r}: an origin is scheme://host[:port], e.g. http://localhost:3000"
            )
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return origins


def _say_serving(url: str) -> None:
    from idcfs.service.notify import sd_notify

    print(f"idcfs: serving IDC read-only at {url} (Ctrl-C or SIGTERM stops it)", flush=True)
    sd_notify("READY=1", f"STATUS=serving {url}")


def _versions(args: argparse.Namespace) -> int:
    from idcfs.catalog.index import CatalogError, IndexFiles, release_versions

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
    from idcfs.service.warm import warm

    result = warm(args.paths, jobs=args.jobs, force=args.force, quiet=args.quiet)
    return 1 if result.failures else 0


def _cache(args: argparse.Namespace) -> int:
    from idcfs.service.cache_admin import cache_clear, cache_info

    if args.mount is not None and args.cache_dir is not None:
        raise ConfigError("give a mount or --cache-dir, not both")
    if args.mount is not None:
        from idcfs.service.mounting import mount_info

        folder = Path(mount_info(args.mount)["cache_dir"])
    else:
        folder = args.cache_dir or Path(os.environ.get("IDCFS_CACHE_DIR") or default_cache_dir())
    if args.action == "clear":
        cache_clear(folder, catalogs=args.catalogs)
        kept = "" if args.catalogs else " (catalog snapshots kept: --catalogs clears them too)"
        print(f"cleared {folder}{kept}")
        return 0
    for name, value in cache_info(folder):
        print(f"{name:18} {value}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from idcfs.service.report import format_table, read_stats

    stats = read_stats(args.mountpoint)
    if args.json:
        import json

        print(json.dumps(stats, indent=1))
        return 0
    print(format_table(stats))
    if args.watch is None:
        return 0
    from idcfs.service.report import format_rates

    while True:
        time.sleep(max(0.1, args.watch))
        previous, stats = stats, read_stats(args.mountpoint)
        print("\n" + format_table(stats) + "\n" + format_rates(previous, stats), flush=True)


def _path(args: argparse.Namespace) -> int:
    from idcfs.api import Mount

    mount = Mount(args.mountpoint)
    missing = 0
    for identifier in args.ids:
        folders = mount.paths(identifier)
        if not folders:
            print(f"idcfs: not in the mount: {identifier}", file=sys.stderr)
            missing += 1
        for folder in folders:
            print(folder)
    return 1 if missing else 0


def _umount(args: argparse.Namespace) -> int:
    from idcfs.service.mounting import unmount

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
    from idcfs.service.mounting import check_allow_other, check_fuse_available, check_mountpoint, start_daemon

    if sys.platform == "win32":
        raise MountError(NO_MOUNT_ON_WINDOWS)
    _resolve_options(args)
    args.mountpoint = args.mountpoint.absolute()
    args.cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()  # paths: absolute already
    if args.ready_fd is None:  # the command a user typed: check before anything slow
        check_mountpoint(args.mountpoint)
        check_fuse_available()
        check_allow_other(args.allow_other)
    if args.dry_run:
        return 0
    usable = _make_private_dir(args.cache_dir)
    if args.foreground or args.ready_fd is not None:
        from idcfs.service.daemon import serve

        return serve(args)
    if args.log_file:
        log_file = Path(args.log_file)
    elif usable:
        log_file = args.cache_dir / "idcfs.log"
    else:
        log_file = _private_temporary_dir() / "idcfs.log"
    args.log_file = str(log_file)
    start_daemon(_child_argv(args), log_file, args.ready_timeout)
    return 0


def _private_temporary_dir() -> Path:
    """A folder of this user's under the temporary folder (the mount's log when the cache
    folder is unusable), named by uid where there are uids."""
    uid = current_uid()
    if uid is None:
        return Path(tempfile.gettempdir()) / "idcfs"  # Windows: already the user's own (%TEMP%)
    return Path(tempfile.gettempdir()) / f"idcfs-{uid}"


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
        uid = current_uid()
        if uid is not None and path.stat().st_uid == uid and path.stat().st_mode & 0o077:
            path.chmod(0o700)  # blocks of what a user reads are nobody else's business
        return os.access(path, os.W_OK)
    except OSError as error:
        print(
            f"idcfs: warning: cache folder {path} is unusable ({error.strerror}); mounting without a disk cache",
            file=sys.stderr,
        )
        return False
