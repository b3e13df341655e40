"""Where option values come from: config file, environment, -o and flags; the mount helper's
argument conventions; the systemd unit; the statistics' readable forms. Pure logic, no mount."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from idcfs.cli.helper import helper_argv
from idcfs.config.sources import ConfigError, parse_mount_options, read_config_file, resolve
from idcfs.service.notify import sd_notify
from idcfs.service.report import format_rates, format_table, prometheus_text
from idcfs.util.counters import LatencyWindow

REPO = Path(__file__).resolve().parent.parent


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- precedence ----------------------------------------------------------------------------------


def test_precedence_is_command_line_then_environment_then_file_then_defaults(tmp_path):
    config = _write(
        tmp_path / "idc.toml",
        'source = "gcs"\ncache_size = "20G"\nprefetch = "file"\nblock_size = 65536\nallow_other = true\n',
    )
    environ = {"IDCFS_CONFIG": str(config), "IDCFS_CACHE_SIZE": "5G", "IDCFS_PREFETCH": "off"}
    values, _ = resolve({"prefetch": "series"}, ["block_size=128K"], environ)
    assert values["source"] == "gcs"  # file over default
    assert values["allow_other"] is True  # file over default
    assert values["cache_size"] == 5 << 30  # environment over file
    assert values["prefetch"] == "series"  # flag over environment
    assert values["block_size"] == 128 << 10  # -o over file
    assert values["memory_cache_size"] is None  # the default: sized from the memory there is
    assert values["config"] == str(config)


def test_a_flag_wins_over_the_same_key_in_dash_o():
    values, _ = resolve({"source": "aws"}, ["source=gcs"], {})
    assert values["source"] == "aws"


def test_config_named_by_dash_o_wins_over_the_environment(tmp_path):
    first = _write(tmp_path / "a.toml", 'source = "gcs"\n')
    second = _write(tmp_path / "b.toml", 'source = "aws"\nlayout = "flat"\n')
    values, _ = resolve({}, [f"config={second}"], {"IDCFS_CONFIG": str(first)})
    assert (values["source"], values["layout"]) == ("aws", "flat")


def test_defaults_alone():
    values, dash_o = resolve({}, [], {})
    assert values["source"] == "aws" and values["prefetch_max_series"] == 2 << 30 and values["collection"] == []
    assert values["config"] is None and dash_o.kernel_flags == []


# -- the config file -----------------------------------------------------------------------------


def test_unknown_key_in_the_file_is_an_error_naming_it_and_the_file(tmp_path):
    config = _write(tmp_path / "idc.toml", 'source = "aws"\ncache_sise = "1G"\n')
    with pytest.raises(ConfigError, match=r"idc\.toml.*'cache_sise'.*did you mean cache_size"):
        read_config_file(config)


def test_file_values_are_typed_and_checked(tmp_path):
    values = read_config_file(
        _write(
            tmp_path / "ok.toml",
            'collection = ["nlst", "lidc_idri"]\nretry_deadline = 7.5\nidc_version = 18\n'
            'no-commercial-restrictions = true\nmemory_cache_size = "64M"\n',
        )
    )
    assert values == {
        "collection": ["nlst", "lidc_idri"],
        "retry_deadline": 7.5,
        "idc_version": 18,
        "no_commercial_restrictions": True,
        "memory_cache_size": 64 << 20,
    }
    for text, message in [
        ("allow_other = 1\n", "expected true or false"),
        ('source = "azure"\n', "not one of aws, gcs"),
        ("collection = [1, 2]\n", "expected a list of strings"),
        ('cache_size = "lots"\n', "not a size"),
        ("cache_size = -1\n", "must not be negative"),
        ("[source]\nname = 'aws'\n", "not a table"),
        ('config = "other.toml"\n', "unknown option 'config'"),
        ("source = \n", "not valid TOML"),
    ]:
        with pytest.raises(ConfigError, match=message):
            read_config_file(_write(tmp_path / "bad.toml", text))


def test_paths_in_a_config_file_are_relative_to_it_and_tilde_expands(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "etc").mkdir()
    config = _write(tmp_path / "etc" / "idc.toml", 'manifest = "ids.txt"\n')
    values, _ = resolve({"config": str(config)}, ["log_file=~/idcfs.log"], {"IDCFS_CACHE_DIR": "~/cache"})
    assert values["manifest"] == str(tmp_path / "etc" / "ids.txt")
    assert values["log_file"] == str(tmp_path / "home" / "idcfs.log")
    assert values["cache_dir"] == str(tmp_path / "home" / "cache")


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve({"config": str(tmp_path / "nope.toml")}, [], {})


def test_example_config_of_the_systemd_unit_is_valid():
    values = read_config_file(REPO / "systemd" / "mnt-idc.toml")
    assert values["allow_other"] is True and values["cache_size"] == 20 << 30


# -- -o mount options ----------------------------------------------------------------------------


def test_dash_o_parsing():
    parsed = parse_mount_options(
        [
            "ro,_netdev,allow_other,source=gcs,cache-size=20G,x-systemd.automount,nofail,defaults",
            "nosuid,nodev,collection=nlst,collection=tcga_luad,where=Modality = 'CT'\\, 'MR',comment=fstab",
        ]
    )
    assert parsed.values == {
        "allow_other": True,
        "source": "gcs",
        "cache_size": 20 << 30,
        "collection": ["nlst", "tcga_luad"],
        "where": "Modality = 'CT', 'MR'",
    }
    assert parsed.kernel_flags == ["nosuid", "nodev"]
    assert "_netdev" in parsed.ignored and "x-systemd.automount" in parsed.ignored


def test_an_unknown_idcfs_variable_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"environment variable: unknown option 'IDCFS_CACHE_SZIE'.*IDCFS_CACHE_SIZE"):
        resolve({}, environ={"IDCFS_CACHE_SZIE": "20G"})
    assert resolve({}, environ={"IDCFS_CACHE_SIZE": "20G", "IDCFS_EMPTY_IS_UNSET": ""})[0]["cache_size"] == 20 << 30


def test_dash_o_errors():
    with pytest.raises(ConfigError, match=r"unknown option 'cahce_size'.*cache_size"):
        parse_mount_options(["cahce_size=1G"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_mount_options(["source"])
    with pytest.raises(ConfigError, match="not a boolean"):
        parse_mount_options(["allow_other=maybe"])


def test_sloppy_dash_o_warns_about_unknown_keys(capsys):
    parsed = parse_mount_options(["mystery=1,source=gcs"], sloppy=True)
    assert parsed.values == {"source": "gcs"}
    assert "mystery" in capsys.readouterr().err


# -- the mount helper ----------------------------------------------------------------------------


def test_mount_helper_arguments_become_idcfs_mount():
    assert helper_argv(["none", "/mnt/idc", "-o", "rw,cache_size=1G"]) == [
        "mount",
        "/mnt/idc",
        "-o",
        "rw,cache_size=1G",
    ]
    assert helper_argv(["gcs", "/mnt/idc", "-n", "-o", "allow_other", "-t", "fuse.idcfs"]) == [
        "mount", "/mnt/idc", "-o", "source=gcs", "-o", "allow_other",
    ]  # fmt: skip
    assert helper_argv(["aws", "/m", "-s", "-f"])[-2:] == ["--sloppy", "--dry-run"]
    with pytest.raises(ConfigError, match="aws, gcs or none"):
        helper_argv(["s3://bucket", "/mnt/idc"])


def test_device_field_has_lowest_command_line_precedence():
    argv = helper_argv(["gcs", "/mnt/idc", "-o", "source=aws"])
    options = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"]
    values, _ = resolve({}, options, {})
    assert values["source"] == "aws"


# -- sd_notify -----------------------------------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_sends_one_datagram(tmp_path, monkeypatch, abstract):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        if abstract:
            name = f"idcfs-test-{os.getpid()}"
            server.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            server.bind(str(tmp_path / "notify"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert sd_notify("READY=1", "STATUS=mounted")
        assert server.recv(4096) == b"READY=1\nSTATUS=mounted"


def test_sd_notify_without_a_service_manager_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


# -- the systemd unit ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("template, instance", [("idcfs@", "mnt-idc"), ("idcfs-serve@", "8080")])
def test_systemd_unit_verifies(tmp_path, template, instance):
    """``systemd-analyze verify`` on an instance of each template (the mount's, the WebDAV
    share's), with idcfs where this test installed it (the units name /usr/local/bin/idcfs,
    which README's steps create)."""
    unit = (REPO / "systemd" / f"{template}.service").read_text(encoding="utf-8")
    assert "Type=notify" in unit and "Restart=on-failure" in unit and "NoNewPrivileges=yes" in unit
    idcfs = Path(sys.executable).with_name("idcfs")
    (tmp_path / f"{template}.service").write_text(unit.replace("/usr/local/bin/idcfs", str(idcfs)), encoding="utf-8")
    (tmp_path / f"{template}{instance}.service").symlink_to(tmp_path / f"{template}.service")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / f"{template}{instance}.service")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # verify only warns about unknown keys and bad values: any message is a defect.
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr + result.stdout


# -- statistics' forms ---------------------------------------------------------------------------


def _stats() -> dict:
    latency = LatencyWindow()
    for ms in range(1, 101):
        latency.observe(ms / 1000)
    tier = {"hits": 9, "misses": 1, "bytes": 1 << 20, "capacity": 1 << 30}
    return {
        "mountpoint": "/mnt/idc", "idc_version": 23, "source": "aws", "uptime_seconds": 3725.0,
        "requests": {"GET": 10, "LIST": 2}, "bytes_fetched": 5 << 20, "retries": 1, "errors": 0, "not_found": 0,
        "internal_errors": 0, "get_latency": latency.snapshot(),
        "cache": {"memory": tier, "disk": tier, "kernel": {"reads": 7, "bytes": 1 << 20, "files_without_reads": 2}},
        "prefetch": {"mode": "series", "useful_bytes": 3 << 20, "wasted_bytes": 0, "unread_bytes": 1 << 20,
                     "completed": 4, "failed": 0},
        "open_files": 1,
    }  # fmt: skip


def test_latency_percentiles():
    snapshot = _stats()["get_latency"]
    assert (snapshot["p50"], snapshot["p99"], snapshot["count"]) == (0.051, 0.1, 100)


def test_stats_table_and_prometheus_text():
    table = format_table(_stats())
    assert "GET 10" in table and "p50 51.0 ms" in table and "90.0% hits" in table and "up 1h02m" in table
    later = _stats()
    later["uptime_seconds"] += 2
    later["requests"]["GET"] += 10
    later["bytes_fetched"] += 4 << 20
    assert "GET 5.0/s" in format_rates(_stats(), later) and "fetched 2.0 MiB/s" in format_rates(_stats(), later)
    text = prometheus_text(_stats())
    assert 'idcfs_requests_total{kind="GET"} 10' in text
    assert 'idcfs_cache_hits_total{tier="disk"} 9' in text
    assert 'idcfs_get_latency_seconds{quantile="0.99"} 0.1' in text
    assert "idcfs_get_latency_seconds_count 100" in text
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


# -- logs ----------------------------------------------------------------------------------------


def test_journal_lines_carry_priorities_when_stderr_is_the_journal(monkeypatch, capfd):
    """Under systemd, stderr is journald's stream (JOURNAL_STREAM names it): each line then
    starts with its syslog priority, and journald adds the time and pid itself."""
    import logging

    from idcfs.service.logs import setup_logging, stderr_is_journal

    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stderr_is_journal()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info")
        logging.getLogger("idcfs.remote.store").error("GET s3://b/k failed after 3 retries")
        logging.getLogger("idcfs.fuse.operations").warning("careful")
        logging.getLogger("idcfs.fuse.operations").debug("not shown")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = capfd.readouterr().err.splitlines()
    assert lines == [
        "<3>ERROR idcfs.remote.store: GET s3://b/k failed after 3 retries",
        "<4>WARNING idcfs.fuse.operations: careful",
    ]
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not stderr_is_journal()


@pytest.mark.parametrize(
    "argv, helper",
    [
        (["aws", "/mnt/idc", "-o", "ro"], True),
        (["none", "/mnt/idc"], True),
        (["idcfs#none", "/mnt/idc", "-o", "ro"], True),
        (["s3://bucket", "/mnt/idc", "-o", "ro"], True),  # mount(8)'s shape: refused later, by device
        (["stat", "demo-mnt"], False),
        (["version"], False),
        (["caches", "info"], False),
        (["mount", "/mnt/idc"], False),
    ],
)
def test_only_mount8s_calls_are_helper_calls(argv, helper):
    from idcfs.cli.helper import is_helper_call
    from idcfs.cli.main import COMMANDS

    assert is_helper_call(argv, COMMANDS) is helper


@pytest.mark.parametrize(
    "word, suggestion", [("stat", "stats"), ("version", "versions"), ("umout", "umount"), ("prefech", "prefetch")]
)
def test_an_unknown_command_gets_a_suggestion(word, suggestion, capsys):
    from idcfs.cli.main import main

    assert main([word, "somewhere"]) == 2
    assert f"unknown command {word!r} (did you mean {suggestion!r}?)" in capsys.readouterr().err
