"""Every mount option in one declarative table: the CLI flags, ``IDCFS_*`` environment variables
and README's option table are all derived from it, so they cannot disagree."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"512M"``, ``"1GiB"``, ``"4096"`` -> bytes (binary units)."""
    match = _SIZE.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 512M, 20G)")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


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
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "idcfs"


@dataclass(frozen=True)
class Option:
    """One mount option. ``kind`` is ``str``, ``bool``, ``size``, ``seconds`` or ``choice``."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "IDCFS_" + self.name.upper()

    @property
    def parse(self) -> Callable[[str], Any]:
        return {"bool": parse_bool, "size": parse_size, "seconds": parse_seconds}.get(self.kind, str)


MOUNT_OPTIONS: tuple[Option, ...] = (
    Option(
        "source",
        "choice",
        "aws",
        "Cloud to read from: aws (S3 buckets) or gcs (their Google Cloud mirrors).",
        choices=("aws", "gcs"),
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
        "Tree layout: a preset name (default) or an idc-index dirTemplate "
        "such as '%%collection_id/%%PatientID/%%StudyInstanceUID/%%Modality_%%SeriesInstanceUID'.",
        metavar="TEMPLATE",
    ),
    Option(
        "index_file",
        "str",
        None,
        "Series index parquet to mount (default: the one bundled with idc-index-data, i.e. the current IDC release).",
        metavar="PARQUET",
    ),
    Option("foreground", "bool", False, "Stay in the foreground instead of daemonizing (logs go to stderr)."),
    Option("debug", "bool", False, "Verbose logs: every retry, and the storage libraries' own messages."),
    Option(
        "log_file",
        "str",
        None,
        "Where the daemon logs (default: CACHE_DIR/idcfs.log; stderr with --foreground).",
        metavar="PATH",
    ),
    Option(
        "cache_dir",
        "str",
        None,
        "Folder for the cache and the daemon's log (default: $XDG_CACHE_HOME/idcfs, created with mode 0700).",
        metavar="DIR",
    ),
    Option("memory_cache_size", "size", "512M", "Bytes of file blocks kept in memory.", metavar="SIZE"),
    Option(
        "block_size",
        "size",
        "1M",
        "Unit of fetching and caching; a file no larger is fetched in one GET.",
        metavar="SIZE",
    ),
    Option(
        "retry_deadline",
        "seconds",
        "60",
        "Give up on a failing request (and answer EIO) after this many seconds of retries.",
        metavar="SECONDS",
    ),
    Option("request_timeout", "seconds", "20", "Longest wait for one request attempt.", metavar="SECONDS"),
    Option(
        "allow_other",
        "bool",
        False,
        "Let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root).",
    ),
    Option(
        "ready_timeout", "seconds", "300", "How long `idcfs mount` waits for the daemon to be ready.", metavar="SECONDS"
    ),
)


def add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...] = MOUNT_OPTIONS) -> None:
    """Add ``options`` as flags whose defaults come from ``IDCFS_*`` variables when set."""
    for option in options:
        raw_default = os.environ.get(option.env, option.default)
        help_text = f"{option.help} [env {option.env}]"
        if option.kind == "bool":
            default = parse_bool(raw_default) if isinstance(raw_default, str) else bool(raw_default)
            parser.add_argument(
                option.flag, dest=option.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        try:
            default = option.parse(raw_default) if isinstance(raw_default, str) else raw_default
        except argparse.ArgumentTypeError as error:
            parser.error(f"{option.env}: {error}")
        if option.kind == "choice" and default not in option.choices:
            parser.error(f"{option.env}: {default!r} is not one of {', '.join(option.choices)}")
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=option.parse,
            default=default,
            choices=option.choices or None,
            metavar=option.metavar,
            help=help_text + (f" (default: {option.default})" if option.default else ""),
        )


def option_table_markdown(options: tuple[Option, ...] = MOUNT_OPTIONS) -> str:
    """README's option table."""
    lines = ["| option | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for option in options:
        default = "off" if option.kind == "bool" and not option.default else (option.default or "")
        text = option.help.replace("%%", "%").replace("|", "\\|")
        lines.append(f"| `{option.flag}` | `{option.env}` | {f'`{default}`' if default else ''} | {text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(option_table_markdown())
