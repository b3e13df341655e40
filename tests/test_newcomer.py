"""What a newcomer ran into (a fresh clone, ``make demo``, a non-root user), each kept fixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idcfs.cli.main import main
from tests.conftest import requires_fuse

REPO = Path(__file__).resolve().parent.parent


def test_a_misspelt_command_gets_the_usage_and_the_nearest_spelling(capsys, tmp_path):
    assert main(["stat", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: idcfs") and "did you mean 'stats'" in err
    with pytest.raises(SystemExit):
        main(["cache", "inf", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "usage: idcfs cache" in err and "unknown action 'inf' (did you mean 'info'?)" in err


def test_cache_clear_keeps_the_catalog_snapshots_unless_asked(capsys, tmp_path):
    snapshot = tmp_path / "catalogs" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "info.json").write_text("{}")
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert (snapshot / "info.json").exists() and "catalog snapshots kept" in capsys.readouterr().out
    assert main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    assert "catalog snapshots  1, 2 B" in capsys.readouterr().out  # one unit system: binary
    assert main(["cache", "clear", "--catalogs", "--cache-dir", str(tmp_path)]) == 0
    assert not snapshot.exists()


def test_a_where_error_shows_the_expression_and_duckdbs_reason_not_the_query():
    from idcfs.catalog.index import CatalogError, IndexFiles, Selection, load_catalog

    with pytest.raises(CatalogError) as raised:
        load_catalog(IndexFiles.bundled(), "default", Selection(where="Modality = 'CT' AND AND x"))
    message = str(raised.value)
    assert message.startswith("""cannot apply --where "Modality = 'CT' AND AND x": Parser Error: syntax error""")
    assert "read_parquet" not in message and "LINE" not in message


def test_a_failed_python_mount_leaves_no_folder_it_made(tmp_path):
    import idcfs

    target = tmp_path / "made" / "for" / "idc"
    with pytest.raises(idcfs.MountError):
        idcfs.mount(target, collection="no_such_collection_anywhere")
    assert not (tmp_path / "made").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(idcfs.MountError):
        idcfs.mount(kept, collection="no_such_collection_anywhere")
    assert kept.is_dir()  # a folder that was there stays


def _demo(cwd: Path, action: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "tests.testbed.demo", action],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.integration
@requires_fuse
def test_the_demo_mount_holds_only_its_series_and_stop_kills_only_its_server(tmp_path):
    """``find`` from the checkout walks the demo's few series, never a million empty folders;
    a stale pid in ``.demo/state.json`` (another program's now) is left alone."""
    started = _demo(tmp_path, "start")
    try:
        assert started.returncode == 0, started.stderr
        series = [p for p in (tmp_path / "demo-mnt").glob("*/*/*/*") if p.is_dir()]
        assert 1 <= len(series) <= 8 and all(any(folder.iterdir()) for folder in series)
        state = json.loads((tmp_path / ".demo" / "state.json").read_text())
        assert state["server_started"] is not None
    finally:
        assert _demo(tmp_path, "stop").returncode == 0
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (tmp_path / ".demo" / "state.json").write_text(json.dumps({"server_pid": bystander.pid, "server_started": 1}))
        assert _demo(tmp_path, "stop").returncode == 0
        assert bystander.poll() is None  # not ours: not killed
    finally:
        bystander.kill()
        bystander.wait()


def test_allow_other_as_a_user_needs_user_allow_other_and_says_so(tmp_path):
    from idcfs.service.mounting import MountError, check_allow_other

    conf = tmp_path / "fuse.conf"
    conf.write_text("# mount_max = 1000\n#user_allow_other\n")
    with pytest.raises(MountError, match="needs the line 'user_allow_other' in .*fuse.conf"):
        check_allow_other(True, uid=1000, fuse_conf=conf)
    check_allow_other(True, uid=0, fuse_conf=conf)  # root may
    check_allow_other(False, uid=1000, fuse_conf=conf)
    conf.write_text("user_allow_other  # for idcfs\n")
    check_allow_other(True, uid=1000, fuse_conf=conf)


@pytest.mark.integration
@requires_fuse
def test_libfuses_own_reason_reaches_the_user(s3_proxy, tmp_path):
    """What libfuse or fusermount writes to the daemon's stderr (its log) is the error's text,
    not only 'status 3, see the log'."""
    from tests.conftest import start_idcfs

    result, _, _ = start_idcfs(tmp_path, s3_proxy.url, "--collection", "cptac_cm", "--kernel-flags", "nosuchflag")
    assert result.returncode == 1
    assert (
        "FUSE could not mount" in result.stderr and "unknown option" in result.stderr and "nosuchflag" in result.stderr
    )


@pytest.mark.integration
@requires_fuse
def test_every_command_on_a_mount_whose_daemon_died_gives_the_clean_up_hint(mount_factory, s3_proxy, generated):
    import signal

    from tests.conftest import run_idcfs, wait_until

    mount = mount_factory(s3_proxy.url, "--collection", generated[0].collection_id)
    pid = mount.daemon_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10)
    for command in (["path", str(mount.path), generated[0].series_uid], ["stats", str(mount.path)]):
        result = run_idcfs(*command)
        assert result.returncode == 1, command
        assert f"clean up with: idcfs umount {mount.path}" in result.stderr, result.stderr
        assert "Transport endpoint" not in result.stderr
    assert run_idcfs("umount", str(mount.path)).returncode == 0


def test_mount_help_is_in_sections_and_ends_with_examples(capsys):
    from idcfs.config.options import HELP_GROUPS, MOUNT_OPTIONS

    grouped = [name for _, names in HELP_GROUPS for name in names]
    assert sorted(grouped) == sorted(option.name for option in MOUNT_OPTIONS)  # each option once
    with pytest.raises(SystemExit):
        main(["mount", "--help"])
    shown = capsys.readouterr().out
    assert all(f"\n{title}:\n" in shown for title, _ in HELP_GROUPS) and "other options" not in shown
    lines = shown.rstrip().splitlines()
    assert lines[-4] == "examples:" and all(line.startswith("  idcfs mount") for line in lines[-3:])
