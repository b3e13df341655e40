"""Every mount option in one declarative table: the CLI flags, ``-o key=value`` mount options,
config-file keys, ``IDCFS_*`` environment variables and README's option table are all derived
from it, so they cannot disagree. Where a value comes from is decided in :mod:`idcfs.config.sources`."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idcfs.blocks.policy import DEFAULT_BLOCK_SIZE, PREFETCH_MODES, PrefetchPolicy
from idcfs.remote.buckets import SOURCES
from idcfs.remote.policy import RetryPolicy
from idcfs.util.memory import usable_memory

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"512M"``, ``"1GiB"``, ``"4096"`` -> bytes (binary units)."""
    match = _SIZE.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 512M, 20G)")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def format_size(n: int) -> str:
    """Bytes as the shortest exact size text: ``2 << 30`` -> ``"2G"``."""
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit.lower()]
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (use true or false)")


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def default_cache_dir() -> Path:
    """systemd's ``CacheDirectory=`` for a service, else the user's cache folder as the system
    keeps them (platformdirs): ``$XDG_CACHE_HOME/idcfs`` or ``~/.cache/idcfs`` on Linux,
    ``~/Library/Caches/idcfs`` on macOS, ``%LOCALAPPDATA%\\idcfs\\Cache`` on Windows."""
    service_cache = os.environ.get("CACHE_DIRECTORY")
    if service_cache:
        return Path(service_cache.split(":")[0])
    import platformdirs

    return Path(platformdirs.user_cache_dir("idcfs", appauthor=False))


#: The memory tier's default: this share of the memory there is, between these bounds.
MEMORY_CACHE_SHARE, MEMORY_CACHE_MIN, MEMORY_CACHE_MAX = 8, 512 << 20, 2 << 30


def default_memory_cache_size(usable: int | None = None) -> int:
    """An eighth of the memory this process may use (``usable``: found when not given), between
    512 MiB and 2 GiB: an object read at random is fetched whole, and a slide file read from
    memory rather than half from disk is read markedly faster; a small machine keeps the floor."""
    usable = usable_memory() if usable is None else usable
    if usable is None:
        return MEMORY_CACHE_MIN
    return max(MEMORY_CACHE_MIN, min(MEMORY_CACHE_MAX, usable // MEMORY_CACHE_SHARE))


def default_cache_size(cache_dir: Path) -> int:
    """A quarter of the free space where the cache lives, at most 50 GiB."""
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return 0
    return min(50 << 30, free // 4)


@dataclass(frozen=True)
class Option:
    """One mount option. ``kind`` is ``str``, ``int``, ``bool``, ``size``, ``seconds``, ``choice`` or
    ``list`` (a repeatable flag; comma-separated in the environment)."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    in_file: bool = True  # may be set in a config file (not so ``config`` itself)
    is_path: bool = False  # a file or folder: ``~`` expands; relative in a config file = beside it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "IDCFS_" + self.name.upper()

    @property
    def parse(self) -> Callable[[str], Any]:
        parsers = {
            "bool": parse_bool,
            "size": parse_size,
            "seconds": parse_seconds,
            "int": parse_int,
            "shard": parse_shard,
        }
        return parsers.get(self.kind, str)


def parse_shard(text: str) -> str:
    """``"2/4"`` (part 2 of 4, counted from 1) -> ``"2/4"``, checked."""
    part, slash, count = str(text).strip().partition("/")
    if not (slash and part.strip().isdigit() and count.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"not a shard: {text!r} (K/N, e.g. 1/4 for the first of four parts)")
    k, n = int(part), int(count)
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"shard {text!r}: K must be 1 to N (1/{max(n, 1)} .. {max(n, 1)}/{max(n, 1)})")
    return f"{k}/{n}"


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


MOUNT_OPTIONS: tuple[Option, ...] = (
    Option(
        "config",
        "str",
        None,
        'TOML file of options (keys as in the config column, e.g. cache_size = "20G"). '
        "Precedence: command line (flags and -o) > environment > this file > defaults.",
        metavar="FILE",
        in_file=False,
        is_path=True,
    ),
    Option(
        "source",
        "choice",
        "aws",
        "Cloud to read from: aws (S3 buckets) or gcs (their Google Cloud mirrors).",
        choices=SOURCES,
    ),
    Option(
        "endpoint_url",
        "str",
        None,
        "S3 or GCS API endpoint to use instead of the public cloud "
        "(any S3-compatible server, an emulator). Applies to the chosen --source.",
        metavar="URL",
    ),
    Option(
        "layout",
        "str",
        "default",
        "Tree layout: a preset (default, flat, by-modality; see README) or an idc-index dirTemplate "
        "such as '%%collection_id/%%PatientID/%%StudyInstanceUID/%%Modality_%%SeriesInstanceUID'.",
        metavar="TEMPLATE",
    ),
    Option(
        "index_file",
        "str",
        None,
        "Series index parquet to mount (default: the one bundled with idc-index-data, i.e. the current IDC release).",
        metavar="PARQUET",
        is_path=True,
    ),
    Option(
        "collection",
        "list",
        None,
        "Mount only this collection (repeatable; in the environment: comma-separated).",
        metavar="ID",
    ),
    Option("modality", "list", None, "Mount only series of this modality, e.g. CT (repeatable).", metavar="M"),
    Option(
        "where",
        "str",
        None,
        "Mount only series matching this SQL condition over the index's columns, "
        "as in idc-index's sql_query on `index`, e.g. \"StudyDate >= '2010-01-01'\".",
        metavar="SQL",
    ),
    Option(
        "license",
        "list",
        None,
        "Mount only series under this license_short_name, e.g. 'CC BY 4.0' (repeatable).",
        metavar="NAME",
    ),
    Option(
        "no_commercial_restrictions",
        "bool",
        False,
        "Leave out series whose license forbids commercial use (CC BY-NC) or is unknown.",
    ),
    Option(
        "idc_version",
        "int",
        None,
        "Mount IDC release N as it was, from the historical series folders (see `idcfs versions`).",
        metavar="N",
    ),
    Option(
        "manifest",
        "str",
        None,
        "Mount exactly the series of this manifest: s5cmd/portal "
        "'cp s3://bucket/<uuid>/* .' lines, crdc_series_uuids or SeriesInstanceUIDs one a line, or JSON "
        "with crdc_series_uuids.",
        metavar="FILE",
        is_path=True,
    ),
    Option(
        "allow_missing",
        "bool",
        False,
        "With --manifest: mount what resolves, logging the identifiers "
        "that match no series (default: refuse to mount).",
    ),
    Option(
        "shard",
        "shard",
        None,
        "Mount only part K of N of the selection, split by PatientID (a patient's studies stay together): "
        "N nodes mounting 1/N .. N/N hold disjoint parts that together are the whole selection.",
        metavar="K/N",
    ),
    Option("foreground", "bool", False, "Stay in the foreground instead of daemonizing (logs go to stderr)."),
    Option(
        "log_level",
        "choice",
        "info",
        "Least severe messages logged: debug, info, warning or error.",
        choices=("debug", "info", "warning", "error"),
    ),
    Option("debug", "bool", False, "Log level debug, and the storage libraries' own messages too."),
    Option(
        "log_file",
        "str",
        None,
        "Where the daemon logs (default: CACHE_DIR/idcfs.log; stderr with --foreground). SIGHUP reopens it.",
        metavar="PATH",
        is_path=True,
    ),
    Option(
        "cache_dir",
        "str",
        None,
        "Folder for the cache and the daemon's log (default: $XDG_CACHE_HOME/idcfs or ~/.cache/idcfs; "
        "~/Library/Caches/idcfs on macOS, %%LOCALAPPDATA%%\\idcfs\\Cache on Windows; or under systemd "
        "the unit's CacheDirectory=; created with mode 0700).",
        metavar="DIR",
        is_path=True,
    ),
    Option(
        "catalog_dir",
        "str",
        None,
        "Folder for built catalogs (default: CACHE_DIR/catalogs). A catalog depends only on the index, "
        "layout and selection, so mounts with different caches (or users) may share one.",
        metavar="DIR",
        is_path=True,
    ),
    Option(
        "cache_size",
        "size",
        None,
        "Cap of the disk cache of file blocks in CACHE_DIR/blocks (least recently used blocks go first; "
        "it survives remounts). Default: a quarter of the free space there, at most 50G; 0 turns the disk "
        "cache off.",
        metavar="SIZE",
    ),
    Option(
        "prefetch",
        "choice",
        "series",
        "Work ahead of reads: off; file (readahead within a file read sequentially); series (also fetch "
        "the rest of a series when one of its files is read).",
        choices=PREFETCH_MODES,
    ),
    Option(
        "prefetch_max_series",
        "size",
        format_size(PrefetchPolicy.max_series_bytes),
        "Series larger than this are not prefetched whole (readahead still applies).",
        metavar="SIZE",
    ),
    Option(
        "prefetch_workers",
        "int",
        str(PrefetchPolicy.workers),
        "Parallel background fetches (readahead and series prefetch).",
        metavar="N",
    ),
    Option(
        "memory_cache_size",
        "size",
        None,
        "Bytes of file blocks kept in memory. Default: an eighth of the memory (the machine's, or its "
        "container's or job's limit), at least 512M, at most 2G.",
        metavar="SIZE",
    ),
    Option(
        "listing_cache_size",
        "size",
        "64M",
        "Memory for series listings and folder entries kept for reuse (every listing also stays on disk).",
        metavar="SIZE",
    ),
    Option(
        "block_size",
        "size",
        format_size(DEFAULT_BLOCK_SIZE),
        "Unit of fetching and caching; a file no larger is fetched in one GET.",
        metavar="SIZE",
    ),
    Option(
        "kernel_readahead",
        "size",
        "1M",
        "How far ahead the kernel reads a file read sequentially (the mount's read_ahead_kb; the kernel's "
        "default is 128K, which makes big files latency-bound). Set by root only; 0 leaves the kernel's.",
        metavar="SIZE",
    ),
    Option(
        "retry_deadline",
        "seconds",
        f"{RetryPolicy.deadline:g}",
        "Give up on a failing request (and answer EIO) after this many seconds of retries.",
        metavar="SECONDS",
    ),
    Option(
        "request_timeout",
        "seconds",
        f"{RetryPolicy.attempt_timeout:g}",
        "Longest wait for one request attempt.",
        metavar="SECONDS",
    ),
    Option(
        "allow_other",
        "bool",
        False,
        "Let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root).",
    ),
    Option(
        "ready_timeout", "seconds", "300", "How long `idcfs mount` waits for the daemon to be ready.", metavar="SECONDS"
    ),
    Option(
        "volumes",
        "bool",
        False,
        "Show SERIES.nifti/ beside each image series SERIES (CT, MR, PT, NM) and SEG: the series as "
        "NIfTI (dcm2niix), a SEG as a label map on its image's grid (highdicom); built on first use and "
        "kept in the disk cache. Off by default: a script that walks a study folder would see new entries.",
    ),
    Option(
        "volume_max_series",
        "size",
        "2G",
        "Series larger than this (as the index says) get no .nifti folder: too large to convert.",
        metavar="SIZE",
    ),
    Option(
        "volume_timeout",
        "seconds",
        "900",
        "A volume's build (its series' fetch aside) is stopped after this long; the next use tries again.",
        metavar="SECONDS",
    ),
    Option(
        "metrics_port",
        "int",
        None,
        "Serve the live statistics as Prometheus text at http://127.0.0.1:PORT/metrics (loopback only).",
        metavar="PORT",
    ),
)

OPTIONS_BY_NAME = {option.name: option for option in MOUNT_OPTIONS}

#: ``idcfs serve``'s own flags, not options of the tree (where it listens, who may read):
#: (flag, type, default, metavar, help). Each has an ``IDCFS_*`` variable (:func:`serve_variable`).
SERVE_FLAGS: tuple[tuple[str, Callable[[str], Any], str | None, str, str], ...] = (
    ("--listen", str, "127.0.0.1:8080", "HOST:PORT", "address to serve on"),
    ("--auth", Path, None, "FILE", "user:password lines; required off loopback"),
    ("--tls-cert", Path, None, "PEM", "serve HTTPS with this certificate"),
    ("--tls-key", Path, None, "PEM", "the certificate's private key"),
    ("--client-timeout", float, "30", "SECONDS",
     "a client's time for each wait on it (its request, each chunk of an answer); then it is cut off"),
)  # fmt: skip


def serve_variable(flag: str) -> str:
    """``--tls-cert`` -> ``IDCFS_TLS_CERT``."""
    return "IDCFS_" + flag.removeprefix("--").replace("-", "_").upper()


#: ``idcfs mount --help`` in sections: each option's, by name (in the table's order within one).
HELP_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("what to mount", ("layout", "index_file", "collection", "modality", "where", "license",
                       "no_commercial_restrictions", "idc_version", "manifest", "allow_missing", "shard")),
    ("where from", ("source", "endpoint_url", "retry_deadline", "request_timeout")),
    ("cache", ("cache_dir", "catalog_dir", "cache_size", "memory_cache_size", "listing_cache_size")),
    ("volumes for machine learning", ("volumes", "volume_max_series", "volume_timeout")),
    ("speed", ("prefetch", "prefetch_max_series", "prefetch_workers", "block_size", "kernel_readahead")),
    ("running as a service", ("config", "foreground", "log_level", "debug", "log_file", "allow_other",
                              "ready_timeout", "metrics_port")),
)  # fmt: skip


def add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...] = MOUNT_OPTIONS) -> None:
    """Add ``options`` as flags, in the sections of :data:`HELP_GROUPS`. A flag not given leaves no
    attribute at all, so :func:`idcfs.config.sources.resolve` can tell "not on the command line"
    from "given the default"."""
    group_of = {name: title for title, names in HELP_GROUPS for name in names}
    titles = [title for title, _ in HELP_GROUPS if any(group_of.get(o.name) == title for o in options)]
    if any(option.name not in group_of for option in options):
        titles.append("other options")
    sections = {title: parser.add_argument_group(title) for title in titles}
    for option in options:
        help_text = f"{option.help} [env {option.env}]"
        if option.default not in (None, False):
            help_text += f" (default: {option.default})"
        common: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS, "help": help_text}
        section = sections[group_of.get(option.name, "other options")]
        if option.kind == "bool" and option.name.startswith("no_"):
            # Already a negation: --no-commercial-restrictions, never --no-no-commercial-restrictions.
            section.add_argument(option.flag, action="store_const", const=True, **common)
        elif option.kind == "bool":
            section.add_argument(option.flag, action=argparse.BooleanOptionalAction, **common)
        elif option.kind == "list":
            section.add_argument(option.flag, action="append", metavar=option.metavar, **common)
        else:
            section.add_argument(
                option.flag, type=option.parse, choices=option.choices or None, metavar=option.metavar, **common
            )


def option_table_markdown(options: tuple[Option, ...] = MOUNT_OPTIONS) -> str:
    """README's option table."""
    lines = [
        "| option | config key, `-o` key | environment | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for option in options:
        default = "off" if option.kind == "bool" and not option.default else (option.default or "")
        text = option.help.replace("%%", "%").replace("|", "\\|")
        key = f"`{option.name}`" + ("" if option.in_file else " (`-o` only)")
        lines.append(f"| `{option.flag}` | {key} | `{option.env}` | {f'`{default}`' if default else ''} | {text} |")
    return "\n".join(lines)


README_BEGIN = "<!-- options:begin (generated by: python -m idcfs.config.options README.md) -->"
README_END = "<!-- options:end -->"


def update_readme(path: str) -> None:
    """Rewrite the option table between README's markers."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text[:start] + "\n" + option_table_markdown() + "\n" + text[end:])


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:
        update_readme(sys.argv[1])
    else:
        print(option_table_markdown())
