"""The tree as files, in-process: the ``vfs`` core every face shares, against the local S3 server
(through the counting proxy), with no FUSE anywhere. These run in seconds and need no
``/dev/fuse``; the mount tests check the kernel's side of the same behaviour."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from idcfs.config.sources import ConfigError, tree_options
from idcfs.remote.retry import StoreError
from idcfs.service.stack import open_tree
from idcfs.vfs.vfs import Vfs
from tests.conftest import source_file, wait_until
from tests.testbed.dicomgen import GeneratedSeries


def open_vfs(tmp_path: Path, endpoint: str, collections: list[str], **options) -> Vfs:
    values = {
        "endpoint_url": endpoint,
        "cache_dir": tmp_path / "cache",
        "collection": collections,
        "block_size": "64K",
        **options,
    }
    return open_tree(tree_options(values), where="test")


@pytest.fixture(scope="module")
def vfs(generated, s3_proxy, tmp_path_factory) -> Iterator[Vfs]:
    tree = open_vfs(
        tmp_path_factory.mktemp("vfs"), s3_proxy.url, sorted({s.collection_id for s in generated}), prefetch="off"
    )
    yield tree
    tree.close()


def read_all(vfs: Vfs, path: str) -> bytes:
    opened = vfs.open(path)
    try:
        return bytes(opened.read(0, opened.size + 1))
    finally:
        opened.close()


def first(generated: list[GeneratedSeries]) -> GeneratedSeries:
    return next(s for s in generated if s.modality != "SM" and len(s.files) > 1)


def test_the_root_lists_the_selected_collections_and_the_control_folder(vfs, generated):
    names = dict(vfs.list("/"))
    assert {s.path.split("/")[0] for s in generated} <= set(names)
    assert names[".idcfs"] is True
    assert all(is_dir for is_dir in names.values())
    assert vfs.stat("/").is_dir and vfs.stat("").is_dir


def test_folders_above_series_need_no_request(vfs, s3_proxy, generated):
    series = first(generated)
    s3_proxy.log.clear()
    parts = series.path.split("/")
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        assert vfs.stat(folder).is_dir
        assert parts[depth] in dict(vfs.list(folder))
    for missing in ("no_such_collection", f"{parts[0]}/no_such_patient", f"{series.path}/../x", "/.idcfs/nothing"):
        with pytest.raises(FileNotFoundError):
            vfs.stat(missing)
    assert s3_proxy.log.count() == 0


def test_a_series_folder_lists_its_objects_with_exact_sizes_listed_once(vfs, s3_proxy, generated):
    series = first(generated)
    s3_proxy.log.clear()
    listed = list(vfs.list(series.path))
    assert listed == sorted((f.name, False) for f in series.files)
    for f in series.files:
        entry = vfs.stat(f"{series.path}/{f.name}")
        assert (entry.is_dir, entry.size) == (False, f.size)
    assert vfs.stat(series.path).is_dir
    assert s3_proxy.log.count("GET", "list-type") == 1  # one LIST, whatever is asked after it


def test_reads_are_byte_exact_clipped_at_the_end_and_cached(vfs, s3_proxy, generated):
    series = first(generated)
    f = series.files[0]
    expected = source_file(series, f.name).read_bytes()
    path = f"{series.path}/{f.name}"
    assert read_all(vfs, path) == expected
    opened = vfs.open(path)
    try:
        for offset, size in ((0, 1), (65535, 2), (1000, 200_000), (f.size - 3, 10), (f.size, 5), (f.size + 9, 5)):
            assert bytes(opened.read(offset, size)) == expected[offset : offset + size]
        with pytest.raises(ValueError):
            opened.read(-1, 5)
    finally:
        opened.close()
    s3_proxy.log.clear()
    assert read_all(vfs, path) == expected
    assert s3_proxy.log.count("GET") == 0  # every block from the cache


def test_concurrent_readers_of_one_file_get_the_same_bytes(vfs, generated):
    series = first(generated)
    f = series.files[-1]
    expected = source_file(series, f.name).read_bytes()
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(read_all(vfs, f"{series.path}/{f.name}"))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [expected] * 8


def test_wrong_kinds_of_path_get_the_posix_errors(vfs, generated):
    series = first(generated)
    file_path = f"{series.path}/{series.files[0].name}"
    with pytest.raises(IsADirectoryError):
        vfs.open(series.path)
    with pytest.raises(NotADirectoryError):
        vfs.list(file_path)
    with pytest.raises(NotADirectoryError):
        vfs.require_folder(file_path)
    with pytest.raises(FileNotFoundError):
        vfs.stat(f"{file_path}/deeper")
    with pytest.raises(FileNotFoundError):
        vfs.open(f"{series.path}/no_such_object.dcm")
    with pytest.raises(FileNotFoundError):
        vfs.list(f"{series.path}/no_such_object.dcm")
    study = series.path.rsplit("/", 1)[0]
    with pytest.raises(FileNotFoundError):  # a file name one level above the series
        vfs.open(f"{study}/{series.files[0].name}")


def test_xattrs_of_folders_and_files(vfs, generated):
    series = first(generated)
    folder = vfs.xattrs(series.path)
    assert folder["user.idc.crdc_series_uuid"] == series.crdc_series_uuid
    assert folder["user.idc.url"] == f"s3://{series.aws_bucket}/{series.crdc_series_uuid}/*"
    name = series.files[0].name
    file = vfs.xattrs(f"{series.path}/{name}")
    assert file["user.idc.url"] == f"s3://{series.aws_bucket}/{series.crdc_series_uuid}/{name}"
    collection = vfs.xattrs(series.path.split("/")[0])
    assert collection["user.idc.collection_id"] == series.collection_id
    assert vfs.xattrs("/.idcfs") == {}
    with pytest.raises(FileNotFoundError):
        vfs.xattrs(f"{series.path}/no_such_object.dcm")


def test_the_control_folder(vfs, generated):
    assert list(vfs.list("/.idcfs")) == [("by-id", True), ("manifest.txt", False), ("stats", False), ("version", False)]
    version = json.loads(read_all(vfs, "/.idcfs/version"))
    assert version["mountpoint"] == "test" and version["series"] == vfs.catalog.num_series
    series = first(generated)
    manifest = read_all(vfs, "/.idcfs/manifest.txt").decode()
    assert f"cp s3://{series.aws_bucket}/{series.crdc_series_uuid}/* .\n" in manifest
    stats_file = vfs.open("/.idcfs/stats")
    try:
        assert stats_file.live
        stats = json.loads(bytes(stats_file.read(0, stats_file.size)))
    finally:
        stats_file.close()
    assert stats["source"] == "aws" and stats["cache"]["memory"]["capacity"] > 0
    assert {"hits", "misses", "bytes"} <= set(stats["cache"]["disk"])
    assert vfs.stat("/.idcfs/by-id").is_dir and list(vfs.list("/.idcfs/by-id")) == []
    assert read_all(vfs, f"/.idcfs/by-id/{series.series_uid}").decode() == f"{series.path}\n"
    assert vfs.stat(f"/.idcfs/by-id/{series.crdc_series_uuid}").size == len(series.path) + 1
    with pytest.raises(FileNotFoundError):
        vfs.stat("/.idcfs/by-id/1.2.3.4.no.such.uid")
    with pytest.raises(FileNotFoundError):
        vfs.open("/.idcfs/by-id/1.2.3.4.no.such.uid")


def test_stats_count_reads_open_files_and_requests(vfs, generated):
    series = first(generated)
    before = vfs.stats()
    opened = vfs.open(f"{series.path}/{series.files[1].name}")
    assert vfs.stats()["open_files"] == before["open_files"] + 1
    opened.read(0, 10)
    opened.close()
    opened.close()  # a second close changes nothing
    after = vfs.stats()
    assert after["open_files"] == before["open_files"]
    assert after["cache"]["kernel"]["reads"] == before["cache"]["kernel"]["reads"] + 1
    assert after["cache"]["kernel"]["bytes"] == before["cache"]["kernel"]["bytes"] + 10


def test_usage_is_the_selection_size(vfs):
    usage = vfs.usage()
    assert usage.num_series == vfs.catalog.num_series and usage.total_bytes > 0


def test_series_prefetch_fetches_the_rest_of_a_series_after_the_first_read(generated, s3_proxy, tmp_path):
    series = first(generated)
    tree = open_vfs(tmp_path, s3_proxy.url, [series.collection_id], prefetch="series")
    try:
        read_all(tree, f"{series.path}/{series.files[0].name}")
        total = sum(f.size for f in series.files)
        assert wait_until(lambda: tree.stats()["prefetch"]["completed"] >= len(series.files) - 1, 20)
        s3_proxy.log.clear()
        for f in series.files[1:]:
            assert read_all(tree, f"{series.path}/{f.name}") == source_file(series, f.name).read_bytes()
        assert s3_proxy.log.count("GET") == 0  # all prefetched
        assert tree.stats()["prefetch"]["useful_bytes"] >= total - series.files[0].size
    finally:
        tree.close()


def test_an_unreachable_store_is_an_oserror_after_retries_never_bytes(generated, tmp_path):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    series = first(generated)
    tree = open_vfs(
        tmp_path, f"http://127.0.0.1:{port}", [series.collection_id], retry_deadline="1", request_timeout="0.5"
    )
    try:
        assert tree.stat(series.path.split("/")[0]).is_dir  # the catalog needs no network
        with pytest.raises(StoreError) as failed:
            list(tree.list(series.path))
        assert isinstance(failed.value, OSError) and "127.0.0.1" in str(failed.value)
    finally:
        tree.close()


def test_options_are_checked_against_the_one_table(tmp_path):
    with pytest.raises(ConfigError, match="did you mean cache_size"):
        tree_options({"cache_sise": "1G"})
    with pytest.raises(ConfigError, match="block_size"):
        tree_options({"block_size": "lots"})
    options = tree_options({"cache_dir": tmp_path, "collection": ["a", "b"], "cache_size": 1 << 30})
    assert options.cache_dir == tmp_path and options.collection == ["a", "b"] and options.cache_size == 1 << 30


def test_the_core_imports_no_fuse():
    code = (
        "import sys, idcfs.vfs.vfs, idcfs.service.stack, idcfs.config.sources; "
        "print(sorted(m for m in sys.modules if 'fuse' in m))"
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_listing_with_sizes_matches_stat(vfs, generated):
    series = first(generated)
    assert list(vfs.list_sized(series.path)) == sorted((f.name, False, f.size) for f in series.files)
    control = {name: (is_dir, size) for name, is_dir, size in vfs.list_sized("/.idcfs")}
    assert control["by-id"] == (True, 0) and control["version"] == (False, vfs.stat("/.idcfs/version").size)
    assert all(is_dir and size == 0 for _, is_dir, size in vfs.list_sized(series.path.split("/")[0]))


def test_an_empty_series_is_logged_once_however_often_it_is_looked_up(vfs, generated, caplog):
    """A ``find`` or ``du`` looks every series folder up; one with no objects (not there yet) is
    asked again each time, and logged once, not a line per lookup."""
    with_bytes = {s.crdc_series_uuid for s in generated}
    uuids = vfs.catalog.series.column("crdc_series_uuid").to_pylist()
    row = next(k for k, uuid in enumerate(uuids) if uuid not in with_bytes)
    path = "/".join(vfs.tree.path_of_row(row))
    with caplog.at_level("WARNING", logger="idcfs"):
        for _ in range(5):
            assert list(vfs.list(path)) == []
    assert sum("has no objects" in record.getMessage() for record in caplog.records) == 1
