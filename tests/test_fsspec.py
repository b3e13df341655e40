"""``idc://``: the tree through fsspec, in this process, with no FUSE, against the local S3 server
(through the counting proxy). Real clients: fsspec's own API and pydicom."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator

import fsspec
import pydicom
import pytest

from idcfs.config.sources import ConfigError
from idcfs.fsspec import IdcFileSystem
from tests.conftest import requires_fuse, source_file, wait_until
from tests.testbed.dicomgen import GeneratedSeries
from tests.testbed.proxy import CountingProxy


@pytest.fixture(scope="module")
def idc(generated, s3_proxy, tmp_path_factory) -> Iterator[IdcFileSystem]:
    fs = fsspec.filesystem(
        "idc",
        skip_instance_cache=True,
        endpoint_url=s3_proxy.url,
        cache_dir=tmp_path_factory.mktemp("idc-fsspec"),
        collection=sorted({s.collection_id for s in generated}),
        block_size="64K",
    )
    yield fs
    fs.vfs.close()


def first(generated: list[GeneratedSeries]) -> GeneratedSeries:
    return next(s for s in generated if s.modality != "SM" and len(s.files) > 1)


def test_the_protocol_is_registered_and_opens_a_file_as_fsspec_does(idc, generated):
    assert fsspec.get_filesystem_class("idc") is IdcFileSystem
    series = first(generated)
    name = series.files[0].name
    with idc.open(f"idc://{series.path}/{name}", "rb") as f:
        assert f.read() == source_file(series, name).read_bytes()


def test_ls_info_and_exact_sizes(idc, generated):
    series = first(generated)
    collection = series.path.split("/")[0]
    assert collection in idc.ls("", detail=False)
    assert idc.info(collection)["type"] == "directory"
    listed = idc.ls(f"idc://{series.path}", detail=True)
    assert sorted((d["name"].rsplit("/", 1)[1], d["size"], d["type"]) for d in listed) == sorted(
        (f.name, f.size, "file") for f in series.files
    )
    info = idc.info(f"{series.path}/{series.files[0].name}")
    assert info["size"] == series.files[0].size and info["type"] == "file"
    assert info["user.idc.crdc_series_uuid"] == series.crdc_series_uuid
    assert idc.isdir(series.path) and idc.isfile(f"{series.path}/{series.files[0].name}")


def test_walking_above_the_series_level_needs_no_request(idc, s3_proxy, generated):
    series = first(generated)
    patient = "/".join(series.path.split("/")[:2])
    s3_proxy.log.clear()
    studies = idc.ls(patient, detail=False)
    assert series.path.rsplit("/", 1)[0] in studies
    assert s3_proxy.log.count(contains="list-type") == 0  # (an earlier read's series prefetch may be GETting)


def test_ranges_seek_and_cat(idc, generated):
    series = first(generated)
    name = series.files[0].name
    path = f"{series.path}/{name}"
    expected = source_file(series, name).read_bytes()
    assert idc.cat_file(path, 100, 200) == expected[100:200]
    assert idc.cat_file(path, -10) == expected[-10:]
    assert idc.cat_file(path, 0, 10**9) == expected
    assert idc.cat(path) == expected
    with idc.open(path) as f:
        f.seek(1000)
        assert f.read(5) == expected[1000:1005]
        f.seek(-3, 2)
        assert f.read() == expected[-3:]


def test_pydicom_reads_a_file_object(idc, generated):
    series = first(generated)
    name = series.files[0].name
    with idc.open(f"{series.path}/{name}") as f:
        dataset = pydicom.dcmread(f)
    assert dataset.SeriesInstanceUID == series.series_uid


def test_errors_are_pythons(idc, generated):
    series = first(generated)
    with pytest.raises(FileNotFoundError):
        idc.info("no_such_collection")
    with pytest.raises(FileNotFoundError):
        idc.open(f"{series.path}/no_such_object.dcm")
    assert not idc.exists(f"{series.path}/no_such_object.dcm") and idc.exists(series.path)
    with pytest.raises(IsADirectoryError):
        idc.open(series.path)
    for write in (
        lambda: idc.open(f"{series.path}/new.dcm", "wb"),
        lambda: idc.rm(f"{series.path}/{series.files[0].name}"),
        lambda: idc.mkdir(f"{series.path}/sub"),
        lambda: idc.pipe_file(f"{series.path}/x", b"x"),
    ):
        with pytest.raises(PermissionError):
            write()


def test_identifiers_to_paths(idc, generated):
    series = first(generated)
    assert idc.path(series.series_uid) == [series.path]
    assert idc.path("1.2.3.4.no.such.uid") == []


def test_options_come_from_the_one_table(tmp_path):
    with pytest.raises(ConfigError, match="did you mean cache_size"):
        IdcFileSystem(skip_instance_cache=True, cache_sise="1G", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="prefetch"):
        IdcFileSystem(skip_instance_cache=True, prefetch="always", cache_dir=tmp_path)


def test_the_face_never_imports_fuse():
    code = "import sys, idcfs.fsspec; print(sorted(m for m in sys.modules if 'fuse' in m))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_find_and_glob_of_a_series(idc, generated):
    series = first(generated)
    expected = sorted(f"{series.path}/{f.name}" for f in series.files)
    assert idc.find(series.path) == expected
    assert sorted(idc.glob(f"idc://{series.path}/*.dcm")) == expected
    study = series.path.rsplit("/", 1)[0]
    assert f"{series.path}/{series.files[0].name}" in idc.find(study)


@pytest.mark.integration
@requires_fuse
def test_one_cache_folder_serves_idc_and_a_mount_both_ways(generated, s3_proxy, mount_factory, tmp_path):
    """A series read through ``idc://`` is warm for a mount on the same cache folder, and the
    reverse, while both are live (block files are found by name; listings by their store)."""
    cache = tmp_path / "shared-cache"
    by_idc, by_mount = [s for s in generated if s.modality != "SM" and s.files][:2]
    collections = sorted({by_idc.collection_id, by_mount.collection_id})
    options = {"endpoint_url": s3_proxy.url, "cache_dir": cache, "block_size": "64K", "prefetch": "off"}
    fs = IdcFileSystem(skip_instance_cache=True, collection=collections, **options)
    mount = mount_factory(
        s3_proxy.url, "--cache-dir", str(cache), "--prefetch", "off", *(f"--collection={c}" for c in collections)
    )
    faces = {
        "idc": (lambda series, name: fs.cat_file(f"{series.path}/{name}"), lambda: fs.vfs.stats()),
        "mount": (lambda series, name: (mount.series_dir(series) / name).read_bytes(), lambda: _mount_stats(mount)),
    }

    def read_whole_series(face: str, series: GeneratedSeries) -> None:
        read = faces[face][0]
        for f in series.files:
            assert read(series, f.name) == source_file(series, f.name).read_bytes()

    try:
        for series, writer, other in ((by_idc, "idc", "mount"), (by_mount, "mount", "idc")):
            read_whole_series(writer, series)
            total, writer_stats = sum(f.size for f in series.files), faces[writer][1]
            assert wait_until(lambda ws=writer_stats, t=total: ws()["cache"]["disk"]["bytes"] >= t, 30)
            s3_proxy.log.clear()
            read_whole_series(other, series)
            assert s3_proxy.log.count() == 0, f"{other} after {writer}: {s3_proxy.log.requests}"
    finally:
        fs.vfs.close()


def _mount_stats(mount) -> dict:
    import json

    return json.loads((mount.path / ".idcfs" / "stats").read_text())


def test_walk_stays_above_the_series_and_get_copies_a_series(idc, s3_proxy, generated, tmp_path):
    series = first(generated)
    patient = "/".join(series.path.split("/")[:2])
    s3_proxy.log.clear()
    walked = {folder: (sorted(dirs), sorted(files)) for folder, dirs, files in idc.walk(patient, maxdepth=2)}
    assert walked[series.path.rsplit("/", 1)[0]][0].count(series.path.rsplit("/", 1)[1]) == 1
    assert s3_proxy.log.count(contains="list-type") == 0  # a series folder is listed only when entered
    idc.get(f"idc://{series.path}/", str(tmp_path / "copy"), recursive=True)
    copied = sorted(p.name for p in (tmp_path / "copy").iterdir())
    assert copied == sorted(f.name for f in series.files)
    for f in series.files:
        assert (tmp_path / "copy" / f.name).read_bytes() == source_file(series, f.name).read_bytes()


def test_cat_ranges_reads_many_ranges_and_returns_each_failure_in_place(idc, generated):
    series = first(generated)
    names = [f.name for f in series.files[:3]]
    data = {name: source_file(series, name).read_bytes() for name in names}
    paths = [f"{series.path}/{name}" for name in names for _ in range(4)]
    starts = [0, 100, -50, 7] * len(names)
    ends = [10, 4000, None, 7] * len(names)
    got = idc.cat_ranges(paths, starts, ends)
    for path, start, end, seen in zip(paths, starts, ends, got, strict=True):
        assert seen == data[path.rsplit("/", 1)[1]][start:end]
    missing = f"{series.path}/no_such_object.dcm"
    mixed = idc.cat_ranges([paths[0], missing], [0, 0], [5, 5])
    assert mixed[0] == data[names[0]][:5] and isinstance(mixed[1], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        idc.cat_ranges([missing], [0], [5], on_error="raise")
    with pytest.raises(ValueError):
        idc.cat_ranges(paths[:2], [0], [5])
    whole = idc.cat(f"idc://{series.path}", recursive=True)  # many files: a dict, as fsspec's cat
    assert whole == {f"{series.path}/{f.name}": source_file(series, f.name).read_bytes() for f in series.files}
    assert idc.cat([paths[0], missing], on_error="omit") == {paths[0]: data[names[0]]}


def test_prefetch_fills_the_cache_that_a_new_tree_then_reads_without_a_request(generated, s3_proxy, tmp_path, capsys):
    series = [s for s in generated if s.modality != "SM" and len(s.files) > 1][1]
    options = {"endpoint_url": s3_proxy.url, "cache_dir": tmp_path / "cache", "block_size": "64K"}
    fs = IdcFileSystem(skip_instance_cache=True, collection=[series.collection_id], prefetch="off", **options)
    try:
        result = fs.prefetch(f"idc://{series.path}", progress=True)
        assert (result.files, result.bytes, result.failures) == (
            len(series.files),
            sum(f.size for f in series.files),
            [],
        )
        assert "prefetch" in capsys.readouterr().err  # tqdm's bar, asked for
        assert wait_until(lambda: fs.vfs.stats()["cache"]["disk"]["bytes"] >= result.bytes, 30)
    finally:
        fs.vfs.close()
    again = IdcFileSystem(skip_instance_cache=True, collection=[series.collection_id], **options)
    try:
        s3_proxy.log.clear()
        for f in series.files:
            assert again.cat_file(f"{series.path}/{f.name}") == source_file(series, f.name).read_bytes()
        assert s3_proxy.log.count("GET") == 0
    finally:
        again.vfs.close()


def test_prefetch_refuses_what_the_disk_cache_cannot_hold(large_object, s3_proxy, tmp_path):
    fs = IdcFileSystem(
        skip_instance_cache=True,
        endpoint_url=s3_proxy.url,
        cache_dir=tmp_path,
        cache_size="4M",
        collection=[large_object.series.collection_id],
    )
    try:
        s3_proxy.log.clear()
        with pytest.raises(OSError, match="would not fit in the disk cache") as raised:
            fs.prefetch(large_object.series.path, progress=False)
        assert raised.value.errno == errno.ENOSPC and "8.0 MiB" in str(raised.value)
        assert s3_proxy.log.count("GET") == s3_proxy.log.count(contains="list-type")  # no object read
    finally:
        fs.vfs.close()


def test_a_network_failure_is_an_oserror_with_its_reason_never_partial_bytes(s3_upstream, generated, tmp_path):
    series = first(generated)
    name = series.files[0].name
    with CountingProxy(s3_upstream.url) as proxy:
        fs = IdcFileSystem(
            skip_instance_cache=True,
            endpoint_url=proxy.url,
            cache_dir=tmp_path,
            collection=[series.collection_id],
            retry_deadline="1",
            request_timeout="1",
        )
        try:
            assert fs.info(f"{series.path}/{name}")["size"] == series.files[0].size  # listings still answer
            proxy.fault = lambda method, path: 503 if "list-type" not in path else None
            with pytest.raises(OSError) as raised:
                fs.cat_file(f"{series.path}/{name}")
            assert not isinstance(raised.value, FileNotFoundError) and "503" in str(raised.value)
            with fs.open(f"{series.path}/{name}") as f, pytest.raises(OSError):
                f.read()
            proxy.fault = None  # the cause gone, nothing of it is remembered
            assert fs.cat_file(f"{series.path}/{name}") == source_file(series, name).read_bytes()
        finally:
            fs.vfs.close()


def _read_in_child(fs: IdcFileSystem, path: str, answer) -> None:
    answer.put(fs.cat_file(path))


def test_a_forked_child_reads_with_a_tree_of_its_own(idc, generated):
    """A DataLoader's or a process pool's forked worker: the parent's threads are gone there."""
    import multiprocessing

    series = first(generated)
    path = f"{series.path}/{series.files[-1].name}"
    idc.cat_file(path, 0, 10)  # the parent's tree is live, its threads running
    context = multiprocessing.get_context("fork")
    answer = context.Queue()
    child = context.Process(target=_read_in_child, args=(idc, path, answer))
    child.start()
    try:
        assert answer.get(timeout=60) == source_file(series, series.files[-1].name).read_bytes()
    finally:
        child.join(30)
    assert child.exitcode == 0


def test_get_and_open_files_as_fsspecs_abstract_get_tests_ask(idc, generated, tmp_path):
    """fsspec's abstract tests (fsspec.tests.abstract) build their source tree by writing it, so
    none runs on a read-only tree; what its get tests check is checked here on a series: a file
    into an existing folder, a glob into a new one, a list of files, and fsspec.open_files."""
    series = first(generated)
    names = [f.name for f in series.files]
    expected = {name: source_file(series, name).read_bytes() for name in names}
    existing = tmp_path / "existing"
    existing.mkdir()
    idc.get(f"{series.path}/{names[0]}", f"{existing}/")
    assert (existing / names[0]).read_bytes() == expected[names[0]]
    idc.get(f"{series.path}/*.dcm", str(tmp_path / "new"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "new").iterdir()} == expected
    idc.get([f"{series.path}/{n}" for n in names[:2]], str(tmp_path / "listed") + "/")
    assert sorted(p.name for p in (tmp_path / "listed").iterdir()) == sorted(names[:2])
    opened = fsspec.open_files(f"idc://{series.path}/*.dcm", **idc.storage_options)
    try:
        assert len(opened) == len(names)
        with opened[0] as f:
            assert f.read() == expected[opened[0].path.rsplit("/", 1)[1]]
    finally:
        opened.fs.vfs.close()  # the options say skip_instance_cache: a tree of its own


READ_AND_EXIT = """
import sys, fsspec
endpoint, cache, collection, *paths = sys.argv[1:]
fs = fsspec.filesystem("idc", endpoint_url=endpoint, cache_dir=cache, collection=[collection], block_size="64K")
for path in paths:
    fs.cat_file(path)
"""


def test_a_script_that_reads_and_ends_leaves_what_it_read_in_the_cache(generated, s3_proxy, tmp_path):
    """A Python process that reads files through idc:// and exits at once (no close: scripts do
    not close filesystems) has its disk writer's queue written at exit: the next run of the
    script reads the same files with no request."""
    series = first(generated)
    paths = [f"{series.path}/{f.name}" for f in series.files]
    arguments = [s3_proxy.url, str(tmp_path / "cache"), series.collection_id, *paths]
    subprocess.run([sys.executable, "-c", READ_AND_EXIT, *arguments], check=True, timeout=120)
    s3_proxy.log.clear()
    subprocess.run([sys.executable, "-c", READ_AND_EXIT, *arguments], check=True, timeout=120)
    assert s3_proxy.log.count("GET") == 0
