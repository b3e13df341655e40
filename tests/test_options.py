"""The option table: sizes, booleans, environment defaults, and the CLI built from it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from idcfs.cli.main import _child_argv, _resolve_options, build_parser
from idcfs.config.options import MOUNT_OPTIONS, option_table_markdown, parse_bool, parse_size
from idcfs.config.sources import ConfigError


@pytest.mark.parametrize(
    "text, size",
    [("4096", 4096), ("64K", 65536), ("1M", 1 << 20), ("20G", 20 << 30), ("1GiB", 1 << 30), ("1.5M", 3 << 19)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "ten", "1X", "-5M"])
def test_bad_sizes(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(bad)


def test_booleans():
    assert parse_bool("yes") and parse_bool("1") and not parse_bool("off")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("maybe")


def _mount_args(*argv: str):
    args = build_parser().parse_args(["mount", "/mnt", *argv])
    _resolve_options(args)
    return args


def test_environment_gives_defaults_and_flags_win(monkeypatch):
    monkeypatch.setenv("IDCFS_SOURCE", "gcs")
    monkeypatch.setenv("IDCFS_MEMORY_CACHE_SIZE", "64M")
    monkeypatch.setenv("IDCFS_ALLOW_OTHER", "true")
    args = _mount_args()
    assert (args.source, args.memory_cache_size, args.allow_other) == ("gcs", 64 << 20, True)
    args = _mount_args("--source", "aws", "--no-allow-other")
    assert (args.source, args.allow_other) == ("aws", False)


def test_repeatable_options_from_environment_and_flags(monkeypatch):
    monkeypatch.setenv("IDCFS_COLLECTION", "nlst, lidc_idri")
    assert _mount_args().collection == ["nlst", "lidc_idri"]
    args = _mount_args("--collection", "a", "--collection", "b")
    assert args.collection == ["a", "b"]  # the command line replaces the environment's list


def test_bad_environment_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("IDCFS_SOURCE", "azure")
    with pytest.raises(ConfigError, match="IDCFS_SOURCE"):
        _mount_args()


def test_daemon_sees_the_same_options():
    args = _mount_args(
        "--source", "gcs", "--block-size", "64K", "--allow-other", "--modality", "CT", "--modality", "MR",
        "--idc-version", "18", "--where", "x = 'a b'", "-o", "nodev,cache_size=1G",
    )  # fmt: skip
    again = build_parser().parse_args(_child_argv(args))
    _resolve_options(again)
    for option in MOUNT_OPTIONS:
        if option.name not in ("foreground", "config"):
            assert getattr(again, option.name) == getattr(args, option.name), option.name
    assert again.kernel_flags == "nodev"


def test_readme_lists_every_option():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert option_table_markdown() in readme, "regenerate README's option table: python -m idcfs.config.options"


def test_a_negative_switch_has_no_double_negative():
    parser = build_parser()
    args = parser.parse_args(["mount", "mnt", "--no-commercial-restrictions"])
    assert args.no_commercial_restrictions is True
    with pytest.raises(SystemExit):
        parser.parse_args(["mount", "mnt", "--no-no-commercial-restrictions"])
    assert parser.parse_args(["mount", "mnt", "--no-allow-other"]).allow_other is False  # others keep both forms


@pytest.mark.parametrize(
    "argv, prog, suggestion",
    [
        (["mount", "mnt", "--colection", "nlst"], "idcfs mount", "--collection"),
        (["stats", "mnt", "--jsn"], "idcfs stats", "--json"),
        (["cache", "info", "--cache-dr", "/tmp"], "idcfs cache", "--cache-dir"),
    ],
)
def test_a_misspelt_flag_gets_its_commands_usage_and_the_nearest_flag(argv, prog, suggestion, capsys):
    from idcfs.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: {prog}" in err and f"(did you mean {suggestion}?)" in err, err
