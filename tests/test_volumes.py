"""--volumes in the core: which series get a .nifti folder, what it holds, built once, the
same bytes in two cache folders, and what a failure leaves (the tree in-process, against the
local S3 server; the faces' tests read the volumes with nibabel and SimpleITK)."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from idcfs.vfs.vfs import Vfs
from tests.conftest import wait_until
from tests.test_vfs import open_vfs, read_all
from tests.testbed.dicomgen import GeneratedSeries

pytestmark = pytest.mark.integration


def ct(generated: list[GeneratedSeries]) -> GeneratedSeries:
    return next(s for s in generated if s.modality == "CT" and s.aws_bucket == "idc-open-data")


@pytest.fixture(scope="module")
def volumes_vfs(generated, s3_proxy, tmp_path_factory) -> Iterator[Vfs]:
    tree = open_vfs(
        tmp_path_factory.mktemp("volumes"),
        s3_proxy.url,
        sorted({s.collection_id for s in generated}),
        prefetch="off",
        volumes=True,
    )
    yield tree
    tree.close()


def test_a_study_folder_shows_a_nifti_folder_beside_each_image_series_without_a_request(
    volumes_vfs, generated, s3_proxy
):
    series = ct(generated)
    study = series.path.rsplit("/", 1)[0]
    s3_proxy.settle()
    s3_proxy.log.clear()
    names = dict(volumes_vfs.list(study))
    folder = series.path.rsplit("/", 1)[1]
    assert names[folder] is True and names[folder + ".nifti"] is True
    sr = next(s for s in generated if s.modality == "SR" and s.study_uid == series.study_uid)
    assert sr.path.rsplit("/", 1)[1] + ".nifti" not in names  # a report is no volume
    assert volumes_vfs.stat(series.path + ".nifti").is_dir
    assert s3_proxy.log.requests == []


def test_a_series_volume_is_what_dcm2niix_makes_of_a_local_copy(volumes_vfs, generated, tmp_path):
    import dcm2niix

    series = ct(generated)
    base = series.path.rsplit("/", 1)[1]
    listed = dict((name, size) for name, _, size in volumes_vfs.list_sized(series.path + ".nifti"))
    assert set(listed) == {f"{base}.nii.gz", f"{base}.json"}
    volume = read_all(volumes_vfs, f"{series.path}.nifti/{base}.nii.gz")
    assert len(volume) == listed[f"{base}.nii.gz"]
    local = tmp_path / "in"
    local.mkdir()
    for file in series.files:
        (local / file.name).write_bytes(read_all(volumes_vfs, f"{series.path}/{file.name}"))
    subprocess.run(
        [dcm2niix.bin, "-z", "n", "-f", "x", "-o", str(tmp_path), str(local)], check=True, capture_output=True
    )
    assert gzip.decompress(volume) == (tmp_path / "x.nii").read_bytes()


def nifti_of(series: GeneratedSeries) -> tuple[str, str]:
    """The series' .nifti folder, and its main volume's path."""
    base = series.path.rsplit("/", 1)[1]
    return f"{series.path}.nifti", f"{series.path}.nifti/{base}.nii.gz"


def digest(vfs: Vfs, folder: str) -> dict[str, str]:
    return {name: hashlib.sha256(read_all(vfs, f"{folder}/{name}")).hexdigest() for name, _ in vfs.list(folder)}


def test_a_volume_is_built_once_and_is_the_same_bytes_in_another_cache_folder(
    volumes_vfs, generated, s3_proxy, tmp_path
):
    series = next(s for s in generated if s.modality == "MR")
    folder, _ = nifti_of(series)
    first = digest(volumes_vfs, folder)
    s3_proxy.settle()
    s3_proxy.log.clear()
    assert digest(volumes_vfs, folder) == first
    assert s3_proxy.log.requests == []  # kept: no fetch, no build
    other = open_vfs(tmp_path, s3_proxy.url, [series.collection_id], prefetch="off", volumes=True)
    try:
        assert digest(other, folder) == first
        assert other.stats()["volumes"]["built"] == 1
    finally:
        other.close()


def test_threads_asking_at_once_share_one_build_and_a_remount_finds_it(generated, s3_proxy, tmp_path):
    import concurrent.futures

    series = next(s for s in generated if s.modality == "CT" and s.aws_bucket == "idc-open-data-cr")
    folder, volume = nifti_of(series)
    tree = open_vfs(tmp_path, s3_proxy.url, [series.collection_id], prefetch="off", volumes=True)
    s3_proxy.settle()
    s3_proxy.log.clear()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            sizes = set(pool.map(lambda _: tree.stat(volume).size, range(8)))
        assert len(sizes) == 1
        stats = tree.stats()["volumes"]
        assert (stats["built"], stats["found"], stats["building"]) == (1, 0, [])
    finally:
        tree.close()
    s3_proxy.settle()
    blocks = sum(-(-f.size // (64 << 10)) for f in series.files)  # open_vfs's 64 KiB blocks
    assert s3_proxy.log.count("GET", series.crdc_series_uuid + "/") == blocks  # each block once
    again = open_vfs(tmp_path, s3_proxy.url, [series.collection_id], prefetch="off", volumes=True)
    try:
        assert again.stat(volume).size in sizes
        assert again.stats()["volumes"]["found"] == 1
    finally:
        again.close()


def test_two_processes_on_one_cache_folder_build_once(generated, s3_proxy, tmp_path):
    import json
    import sys

    series = next(s for s in generated if s.modality == "CT" and s.aws_bucket == "idc-open-data")
    _, volume = nifti_of(series)
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from tests.test_vfs import open_vfs\n"
        f"tree = open_vfs(Path({str(tmp_path)!r}), {s3_proxy.url!r}, [{series.collection_id!r}], prefetch='off',"
        " volumes=True)\n"
        f"size = tree.stat({volume!r}).size\n"
        "print(json.dumps([size, tree.stats()['volumes']]))\n"
        "tree.close()\n"
    )
    repo = Path(__file__).parent.parent
    runs = [subprocess.Popen([sys.executable, "-c", script], cwd=repo, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    results = [json.loads(run.communicate(timeout=240)[0]) for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert results[0][0] == results[1][0]
    assert sorted((r[1]["built"], r[1]["found"]) for r in results) == [(0, 1), (1, 0)]


def test_a_pack_the_cache_let_go_of_is_built_again_with_the_same_bytes(generated, s3_proxy, tmp_path):
    series = next(s for s in generated if s.modality == "MR")
    folder, volume = nifti_of(series)
    tree = open_vfs(tmp_path, s3_proxy.url, [series.collection_id], prefetch="off", volumes=True)
    try:
        before = digest(tree, folder)
        opened = tree.open(volume)  # open before the pack goes: its reads build it again
        packs = [
            p for p in (tmp_path / "cache" / "blocks").rglob("*") if p.is_file() and p.stat().st_size > opened.size
        ]
        assert len(packs) == 1
        packs[0].unlink()  # as an eviction would
        data = bytes(opened.read(0, opened.size))
        opened.close()
        assert hashlib.sha256(data).hexdigest() == before[volume.rsplit("/", 1)[1]]
        assert digest(tree, folder) == before
        assert tree.stats()["volumes"]["built"] == 2
    finally:
        tree.close()


def test_a_network_failure_fails_the_build_and_the_next_use_builds(generated, s3_upstream, tmp_path):
    from idcfs.remote.errors import StoreError
    from tests.testbed.proxy import CountingProxy

    series = next(s for s in generated if s.modality == "CT" and s.aws_bucket == "idc-open-data")
    folder, _ = nifti_of(series)
    with CountingProxy(s3_upstream.url) as proxy:
        tree = open_vfs(tmp_path, proxy.url, [series.collection_id], prefetch="off", volumes=True, retry_deadline="1")
        try:
            tree.list(series.path)  # the listing first: then only the objects' GETs fail
            proxy.fault = lambda method, path: 503 if method == "GET" and ".dcm" in path else None
            with pytest.raises(StoreError):  # each face's EIO
                tree.list(folder)
            assert tree.stats()["volumes"]["failed"] == 1
            assert not list((tmp_path / "cache" / "volumes").glob("*.*.*"))  # nothing of the build left
            proxy.fault = None
            assert {name for name, _ in tree.list(folder)} == {
                f"{folder.rsplit('/', 1)[1][: -len('.nifti')]}.nii.gz",
                f"{folder.rsplit('/', 1)[1][: -len('.nifti')]}.json",
            }
        finally:
            proxy.fault = None
            tree.close()


def test_without_a_disk_cache_volumes_are_refused_with_a_reason(generated, s3_proxy, tmp_path):
    from idcfs.service.mounting import MountError

    with pytest.raises(MountError, match="disk cache"):
        open_vfs(tmp_path, s3_proxy.url, ["lung_pet_ct_dx"], volumes=True, cache_size="0")


def test_series_over_the_size_limit_get_no_nifti_folder(generated, s3_proxy, tmp_path):
    series = ct(generated)
    tree = open_vfs(tmp_path, s3_proxy.url, [series.collection_id], volumes=True, volume_max_series="1K")
    try:
        study = series.path.rsplit("/", 1)[0]
        assert not [name for name, _ in tree.list(study) if name.endswith(".nifti")]
        with pytest.raises(FileNotFoundError):
            tree.stat(series.path + ".nifti")
    finally:
        tree.close()


def test_a_build_past_its_deadline_is_killed_and_leaves_nothing(generated, s3_proxy, tmp_path):
    series = ct(generated)
    folder, _ = nifti_of(series)
    tree = open_vfs(tmp_path, s3_proxy.url, [series.collection_id], volumes=True, volume_timeout="0.01")
    try:
        with pytest.raises(TimeoutError, match="longer than"):
            tree.list(folder)
        stats = tree.stats()["volumes"]
        assert (stats["failed"], stats["building"]) == (1, [])
        assert not list((tmp_path / "cache" / "volumes").glob("*.*.*"))
        children = subprocess.run(["pgrep", "-f", "idcfs.derived.child"], capture_output=True, text=True)
        assert children.stdout.strip() == ""
    finally:
        tree.close()


def test_a_built_volume_counts_in_the_disk_cache_and_leaves_with_its_least_recent_blocks(generated, s3_proxy, tmp_path):
    series = next(s for s in generated if s.modality == "MR")
    _, volume = nifti_of(series)
    tree = open_vfs(tmp_path, s3_proxy.url, [series.collection_id], prefetch="off", volumes=True, cache_size="64M")
    try:
        disk = tree.reader.cache.disk
        assert disk is not None
        data = read_all(tree, volume)  # built: the series' blocks and the pack
        assert tree.flush(30)
        assert disk.bytes_used >= len(data) + series.total_bytes
        cap = disk.size_limit
        disk.size_limit = disk._effective_limit = 1  # a cap nothing fits under: everything goes
        disk.touch("nothing")  # a turn of the writer
        assert wait_until(lambda: disk.bytes_used == 0)
        disk.size_limit = disk._effective_limit = cap
        assert tree.stat(volume).size == len(data)  # known without the pack: a build's sizes never change
        assert read_all(tree, volume) == data  # built again, the same
        assert tree.stats()["volumes"]["built"] == 2
    finally:
        tree.close()


def test_a_desktops_probes_inside_a_nifti_folder_are_not_found_without_a_build(generated, s3_proxy, tmp_path):
    series = ct(generated)
    folder, _ = nifti_of(series)
    tree = open_vfs(tmp_path, s3_proxy.url, [series.collection_id], prefetch="off", volumes=True)
    try:
        for probe in ("desktop.ini", "AutoRun.inf", ".DS_Store", f"._{series.path.rsplit('/', 1)[1]}.nii.gz"):
            with pytest.raises(FileNotFoundError):
                tree.stat(f"{folder}/{probe}")
            with pytest.raises(FileNotFoundError):
                tree.open(f"{folder}/{probe}")
        assert tree.stats()["volumes"]["built"] == 0
    finally:
        tree.close()
