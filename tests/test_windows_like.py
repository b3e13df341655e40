"""idc:// and ``idcfs serve`` with the calls Windows lacks taken away (tests/windows_like).

No Windows machine runs the suite: these run the two faces in processes where ``os.pread``,
``os.fork``, ``os.getuid``, ``mmap.MAP_PRIVATE``, ``fcntl`` and the rest are gone, so every path
idcfs takes there is the portable one (positional reads through a file object, the catalog
built in a new interpreter rather than a fork, anonymous maps without flags, no uid checks).
What this cannot show, Windows' own file semantics, is tested in process where the code handles
it (``test_disk_tier``). The test harness itself runs as usual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PYTHON_AS_ON_WINDOWS, REPO, SERVE_AS_ON_WINDOWS, source_file
from tests.test_webdav import start_serve, stop_serve, url_of
from tests.testbed.dicomgen import GeneratedSeries

#: idc:// in a Windows-like interpreter: each file's size as listed and its bytes' length and
#: hash, as JSON; and proof that the calls are gone.
LIST_AND_READ = """
import hashlib, json, os, sys
import mmap
assert not hasattr(os, "pread") and not hasattr(os, "fork") and not hasattr(mmap, "MAP_PRIVATE")
assert sys.modules.get("fcntl", 0) is None
import fsspec
endpoint, cache, catalogs, collections, *folders = sys.argv[1:]
fs = fsspec.filesystem("idc", endpoint_url=endpoint, cache_dir=cache, catalog_dir=catalogs,
                       collection=collections.split(","), block_size="64K", skip_instance_cache=True)
result = fs.prefetch(folders, progress=False)
assert not result.failures, result.failures
found = {}
for folder in folders:
    for info in fs.ls(folder, detail=True):
        data = fs.cat_file(info["name"])
        found[info["name"]] = [info["size"], len(data), hashlib.sha256(data).hexdigest()]
print(json.dumps(found))
"""


def windows_like_env() -> dict[str, str]:
    return {**os.environ, **PYTHON_AS_ON_WINDOWS}


def expected(series: list[GeneratedSeries]) -> dict[str, list]:
    import hashlib

    answer = {}
    for s in series:
        for f in s.files:
            data = source_file(s, f.name).read_bytes()
            answer[f"{s.path}/{f.name}"] = [len(data), len(data), hashlib.sha256(data).hexdigest()]
    return answer


def read_with_idc(endpoint: str, cache: Path, catalogs: Path, series: list[GeneratedSeries]) -> dict[str, list]:
    collections = ",".join(sorted({s.collection_id for s in series}))
    run = subprocess.run(
        [sys.executable, "-c", LIST_AND_READ, endpoint, str(cache), str(catalogs), collections,
         *(s.path for s in series)],
        env=windows_like_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def some_series(generated: list[GeneratedSeries], count: int) -> list[GeneratedSeries]:
    return [s for s in generated if s.modality != "SM" and len(s.files) > 1][:count]


def test_the_calls_windows_lacks_are_gone_in_that_mode():
    probe = "import os, mmap, signal; print(hasattr(os, 'pread'), hasattr(mmap, 'MAP_PRIVATE'), hasattr(os, 'getuid'))"
    run = subprocess.run([sys.executable, "-c", probe], env=windows_like_env(), capture_output=True, text=True)
    assert run.stdout.split() == ["False", "False", "False"], run.stderr
    run = subprocess.run([sys.executable, "-c", "import fcntl"], env=windows_like_env(), capture_output=True, text=True)
    assert run.returncode != 0 and "fcntl" in run.stderr


@pytest.mark.integration
def test_idc_lists_exact_sizes_reads_byte_exact_and_a_second_process_reads_from_the_cache(
    generated, s3_proxy, tmp_path
):
    """The catalog is built in a new interpreter (no fork), blocks are written and read back
    through the portable calls: a second process makes no request at all."""
    series = some_series(generated, 2)
    want = expected(series)
    catalogs = tmp_path / "catalogs"  # its own: this process builds it, without fork
    s3_proxy.log.clear()
    assert read_with_idc(s3_proxy.url, tmp_path / "cache", catalogs, series) == want
    assert s3_proxy.log.count("GET") > 0
    assert any(catalogs.glob("*/info.json")), "the catalog was stored by the build's own process"
    s3_proxy.settle()
    s3_proxy.log.clear()
    assert read_with_idc(s3_proxy.url, tmp_path / "cache", catalogs, series) == want
    assert s3_proxy.log.requests == []


@pytest.mark.integration
def test_serve_lists_exact_sizes_and_answers_byte_exact(generated, s3_proxy, tmp_path, monkeypatch):
    series = some_series(generated, 1)[0]
    with monkeypatch.context() as patch:
        for name, value in PYTHON_AS_ON_WINDOWS.items():
            patch.setenv(name, value)
        served = start_serve(tmp_path, s3_proxy.url, f"--collection={series.collection_id}")
    try:
        status, _, body = served.request("PROPFIND", url_of(series.path) + "/", {"Depth": "1"})
        assert status == 207
        for f in series.files:
            data = source_file(series, f.name).read_bytes()
            assert f"<ns0:getcontentlength>{len(data)}</ns0:getcontentlength>".encode() in body or (
                f">{len(data)}<".encode() in body
            )
            assert served.request("GET", url_of(f"{series.path}/{f.name}"))[2] == data
    finally:
        stop_serve(served)


@pytest.mark.integration
def test_a_mount_idc_and_serve_share_one_cache_folder(generated, s3_proxy, mount_factory, tmp_path, monkeypatch):
    """What one face fetched, the others read with no request: the mount (Linux, as usual)
    and the two Windows-like faces, on one cache folder."""
    first, second = some_series(generated, 2)
    collections = sorted({first.collection_id, second.collection_id})
    selection = [f"--collection={c}" for c in collections]
    cache = tmp_path / "cache"
    mount = mount_factory(s3_proxy.url, *selection, "--cache-dir", str(cache), "--block-size", "64K")
    with monkeypatch.context() as patch:
        for name, value in PYTHON_AS_ON_WINDOWS.items():
            patch.setenv(name, value)
        served = start_serve(tmp_path, s3_proxy.url, *selection)  # its cache: tmp_path / "cache"
    try:
        for f in first.files:  # through the mount, cold
            assert (mount.series_dir(first) / f.name).read_bytes() == source_file(first, f.name).read_bytes()
        for f in second.files:  # through the share, cold
            got = served.request("GET", url_of(f"{second.path}/{f.name}"))[2]
            assert got == source_file(second, f.name).read_bytes()
        s3_proxy.settle()
        stop_serve(served)  # its disk writer's queue written at a clean stop
        served = None
        s3_proxy.log.clear()
        catalogs = Path(os.environ["IDCFS_CATALOG_DIR"])
        assert read_with_idc(s3_proxy.url, cache, catalogs, [first, second]) == expected([first, second])
        assert s3_proxy.log.count("GET") == 0
        for f in second.files:  # what the share fetched, through the mount
            assert (mount.series_dir(second) / f.name).read_bytes() == source_file(second, f.name).read_bytes()
        assert s3_proxy.log.count("GET") == 0
    finally:
        if served is not None:
            stop_serve(served)


def test_mount_on_windows_says_in_one_line_what_to_use_instead(tmp_path, monkeypatch, capsys):
    from idcfs.cli.main import main

    monkeypatch.setattr(sys, "platform", "win32")
    assert main(["mount", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "idcfs serve" in error and "idc://" in error


@pytest.mark.integration
def test_the_share_and_dicomweb_tests_pass_against_a_windows_like_share(tmp_path):
    """Every WebDAV test (real clients, replayed desktop clients, Windows' groups, the load) and
    the DICOMweb face's (dicomweb-client, wsidicom, streamed and cut answers) again, with each
    ``idcfs serve`` they start Windows-like."""
    files = ["tests/test_webdav.py", "tests/test_webdav_clients.py", "tests/test_webdav_windows.py",
             "tests/test_webdav_load.py", "tests/test_dicomweb.py"]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}", *files],
        cwd=REPO, env={**os.environ, SERVE_AS_ON_WINDOWS: "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1] and "skipped" not in run.stdout.splitlines()[-1]


#: idc:// with volumes in a Windows-like interpreter: the volume's size as listed, its hash.
VOLUME = """
import hashlib, json, sys
import fsspec
endpoint, cache, catalogs, collection, folder = sys.argv[1:]
fs = fsspec.filesystem("idc", endpoint_url=endpoint, cache_dir=cache, catalog_dir=catalogs, collection=[collection],
                       block_size="64K", skip_instance_cache=True, volumes=True)
found = {i["name"].rsplit("/", 1)[1]: [i["size"], hashlib.sha256(fs.cat_file(i["name"])).hexdigest()]
         for i in fs.ls(folder, detail=True)}
print(json.dumps(found))
"""


def test_idc_builds_the_same_volumes_without_the_calls_windows_lacks(generated, s3_proxy, tmp_path):
    """No fork, no fcntl lock, no rlimit, no process group: the build runs, and gives the bytes a
    Linux build gives."""
    series = next(s for s in generated if s.modality == "CT")
    folder = f"{series.path}.nifti"

    def build(cache: Path, env: dict[str, str] | None) -> dict[str, list]:
        run = subprocess.run(
            [sys.executable, "-c", VOLUME, s3_proxy.url, str(cache), str(tmp_path / "catalogs"),
             series.collection_id, folder],
            env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    windows_like = build(tmp_path / "windows-like", windows_like_env())
    assert windows_like == build(tmp_path / "linux", None)
    assert {name.rsplit(".", 2)[-2:][-1] for name in windows_like} == {"gz", "json"}
