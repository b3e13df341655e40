"""Where each mount option's value comes from: defaults < config file < environment < command line.

The command line is the flags plus ``-o key=value,...`` (what ``mount(8)`` and ``mount.fuse3``
pass from an fstab line); a flag wins over the same key in ``-o``. Every source is checked
against the one option table (:data:`idcfs.config.options.MOUNT_OPTIONS`), and a value that does not
fit, or a key that names no option, is an error naming where it came from: a typo in
``/etc/idcfs/x.toml`` must stop a boot-time mount with a clear line in the journal, not mount
something else quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idcfs.config.options import (
    MOUNT_OPTIONS,
    OPTIONS_BY_NAME,
    SERVE_FLAGS,
    Option,
    default_cache_dir,
    serve_variable,
)
from idcfs.util.suggest import did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Generic mount options that fstab lines carry for mount(8) and systemd, meaningless here
#: (``ro``: idcfs is always read-only; ``rw`` is accepted too, and writes still get EROFS).
IGNORED_MOUNT_OPTIONS = frozenset(
    {
        "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail",
        "ro", "rw", "relatime", "norelatime", "strictatime", "lazytime", "nolazytime", "diratime",
        "nodiratime", "silent", "loud", "nosymfollow",
    }
)  # fmt: skip
#: Generic prefixes of the same kind: ``x-systemd.automount``, ``comment=...``.
IGNORED_PREFIXES = ("x-", "comment=")
#: Kernel mount flags handed on to the FUSE mount as they are.
KERNEL_FLAGS = frozenset({"nosuid", "suid", "nodev", "dev", "noexec", "exec", "noatime", "atime", "sync", "async"})


class ConfigError(ValueError):
    """An option value or key that cannot be used; the message names its source."""


@dataclass
class MountOptions:
    """``-o`` text split into option values (raw strings; lists accumulate) and kernel flags."""

    values: dict[str, Any] = field(default_factory=dict)
    kernel_flags: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _unknown(key: str, origin: str, keys: Iterable[str]) -> ConfigError:
    hint = did_you_mean(key, keys, quote=False) or " (see idcfs mount --help)"
    return ConfigError(f"{origin}: unknown option {key!r}{hint}")


def _key(text: str) -> str:
    return text.strip().replace("-", "_")


def convert(option: Option, value: Any, origin: str) -> Any:
    """``value`` (a string from text, or a typed TOML value) as the option's type."""
    where = f"{origin}: {option.name}"
    try:
        if option.kind == "list":
            if isinstance(value, str):
                return [item.strip() for item in value.split(",") if item.strip()]
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                return list(value)
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        if isinstance(value, str):
            converted = option.parse(value)
        elif (
            option.kind == "bool"
            and isinstance(value, bool)
            or option.kind in ("int", "size")
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            converted = value
        elif option.kind == "seconds" and isinstance(value, (int, float)) and not isinstance(value, bool):
            converted = option.parse(str(value))
        else:
            raise ConfigError(f"{where}: expected {_KIND_NAMES[option.kind]}, got {value!r}")
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"{where}: {error}") from None
    if option.kind == "choice" and converted not in option.choices:
        raise ConfigError(f"{where}: {converted!r} is not one of {', '.join(option.choices)}")
    if option.kind in ("int", "size") and converted < 0:
        raise ConfigError(f"{where}: must not be negative: {converted!r}")
    return converted


_KIND_NAMES = {
    "str": "a string",
    "choice": "a string",
    "bool": "true or false",
    "int": "a whole number",
    "size": 'a size such as 4096 or "20G"',
    "seconds": "a number of seconds",
    "shard": 'a shard such as "1/4"',
}


def defaults() -> dict[str, Any]:
    return {
        o.name: convert(o, o.default, "default") if o.default is not None else ([] if o.kind == "list" else None)
        for o in MOUNT_OPTIONS
    }


def _split_mount_options(text: str) -> list[str]:
    """Split on commas; ``\\,`` is a comma inside a value."""
    return [part.replace("\0", ",") for part in text.replace("\\,", "\0").split(",")]


def parse_mount_options(texts: Iterable[str], sloppy: bool = False) -> MountOptions:
    """``-o`` arguments, as mount(8) passes them: ``key=value`` or a bare ``key`` (true).

    Generic mount options are ignored, kernel flags are kept for the FUSE mount, and an unknown
    key is an error (``sloppy``, mount's ``-s``: a warning on stderr instead).
    """
    result = MountOptions()
    for text in texts:
        for item in _split_mount_options(text):
            item = item.strip()
            if not item:
                continue
            raw_key, has_value, value = item.partition("=")
            key = _key(raw_key)
            if item in KERNEL_FLAGS:
                result.kernel_flags.append(item)
                continue
            if raw_key in IGNORED_MOUNT_OPTIONS or item.startswith(IGNORED_PREFIXES):
                result.ignored.append(item)
                continue
            option = OPTIONS_BY_NAME.get(key)
            if option is None:
                error = _unknown(key, "-o", OPTIONS_BY_NAME)
                if not sloppy:
                    raise error
                print(f"idcfs: warning: {error} (ignored: sloppy mount)", file=sys.stderr)
                continue
            if not has_value:
                if option.kind != "bool":
                    raise ConfigError(f"-o: {key} needs a value ({key}=...)")
                value = "true"
            if option.kind == "list":
                result.values.setdefault(key, []).extend(convert(option, value, "-o"))
            else:
                result.values[key] = convert(option, value, "-o")
    return result


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML file of ``key = value`` lines, keys as in the option table."""
    origin = f"config file {path}"
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{origin}: not found") from None
    except OSError as error:
        raise ConfigError(f"{origin}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{origin}: not valid TOML: {error}") from None
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _key(raw_key)
        option = OPTIONS_BY_NAME.get(key)
        if option is None or not option.in_file:
            raise _unknown(raw_key, origin, [o.name for o in MOUNT_OPTIONS if o.in_file])
        if isinstance(value, dict):
            raise ConfigError(f"{origin}: {raw_key}: expected a value, not a table")
        values[key] = convert(option, value, origin)
        if option.is_path:  # /etc/idcfs/x.toml saying manifest = "ids.txt" means /etc/idcfs/ids.txt
            values[key] = str(Path(path).parent / Path(values[key]).expanduser())
    return values


#: ``idcfs serve``'s own variables (where it listens, who may read: not options of the tree).
SERVE_VARIABLES = frozenset(serve_variable(flag) for flag, *_ in SERVE_FLAGS)


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``IDCFS_*`` variables that are set (an empty one counts as unset). A variable of that
    prefix that names no option is an error, as an unknown key anywhere else is: a misspelt
    ``IDCFS_CACHE_SZIE=20G`` must not be silently ignored."""
    known = {option.env for option in MOUNT_OPTIONS} | SERVE_VARIABLES
    for name in sorted(environ):
        if name.startswith("IDCFS_") and name not in known and environ[name].strip():
            raise _unknown(name, "environment variable", known)
    values = {}
    for option in MOUNT_OPTIONS:
        text = environ.get(option.env)
        if text is not None and text.strip():
            values[option.name] = convert(option, text, option.env)
    return values


def resolve(
    command_line: Mapping[str, Any],
    mount_options: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    sloppy: bool = False,
) -> tuple[dict[str, Any], MountOptions]:
    """Every option's value: command line (flags, then ``-o``) > environment > file > defaults.

    The config file is named by ``--config`` / ``-o config=`` or else ``IDCFS_CONFIG``.
    """
    environ = os.environ if environ is None else environ
    dash_o = parse_mount_options(mount_options, sloppy=sloppy)
    given = {**dash_o.values, **command_line}
    environment = from_environment(environ)
    config_path = given.get("config") or environment.get("config")
    from_file = read_config_file(Path(config_path).expanduser()) if config_path else {}
    values = {**defaults(), **from_file, **environment, **given}
    for option in MOUNT_OPTIONS:  # -o and environment values get no shell's ~ expansion
        if option.is_path and values[option.name]:
            values[option.name] = str(Path(values[option.name]).expanduser().absolute())
    return values, dash_o


def as_flags(
    values: Mapping[str, Any], skip: Iterable[str] = ("foreground", "config"), given_only: bool = False
) -> list[str]:
    """Values as command-line flags again (they win over every other source): every resolved
    value, so a daemon started with them sees exactly what the resolving command saw; or, with
    ``given_only``, just the options in ``values`` (the environment and a file still apply to
    the rest, as for a command typed with those flags)."""
    skipped = set(skip)
    argv: list[str] = []
    for option in MOUNT_OPTIONS:
        value = values.get(option.name)
        if option.name in skipped or (given_only and option.name not in values):
            continue
        if option.kind == "bool" and option.name.startswith("no_"):
            argv += [option.flag] if value else []  # off is its default: nothing to say
        elif option.kind == "bool":
            argv.append(option.flag if value else "--no-" + option.flag[2:])
        elif option.kind == "list":
            for item in value or ():
                argv += [option.flag, item]
        elif value is not None:
            argv.append(f"{option.flag}={value}")  # one word: a value may start with '-'
    return argv


def check_given(given: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Values given by option name from Python (keyword arguments), checked and converted as a
    config file's are; None means not given. Paths may be ``os.PathLike``, lists any iterable."""
    names = [option.name for option in MOUNT_OPTIONS]
    checked: dict[str, Any] = {}
    for key, value in given.items():
        name = _key(key)
        if name not in OPTIONS_BY_NAME:
            raise _unknown(name, origin, names)
        if value is None:
            continue
        option = OPTIONS_BY_NAME[name]
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        elif option.kind == "list" and not isinstance(value, str):
            value = [os.fspath(item) if isinstance(item, os.PathLike) else item for item in value]
        checked[name] = convert(option, value, origin)
    return checked


def tree_options(
    given: Mapping[str, Any], origin: str = "argument", environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """Every option's value for a face opened from Python (``idc://``, a test): keyword values
    by option name, checked and converted as a config file's are, over the environment and the
    defaults. An ``argparse.Namespace``, as the daemon's options are."""
    return tree_namespace(check_given(given, origin), environ)


def tree_namespace(command_line: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Every option's value, as :func:`resolve` finds them over ``command_line`` (values already
    checked: a command's parsed flags, or :func:`check_given`'s), the cache folder a ``Path``."""
    values, _ = resolve(command_line, environ=environ)
    options = argparse.Namespace(**values)
    options.cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    return options
