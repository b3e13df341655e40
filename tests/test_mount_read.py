"""Browse and read through a real mount of the full bundled index, served by local S3 and GCS."""

from __future__ import annotations

import errno
import os
import random
import stat
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pydicom
import pytest

from idcfs.catalog.index import IndexFiles
from idcfs.catalog.layout import escape_name
from idcfs.service.mounting import kernel_readahead

from .conftest import requires_fuse, source_file, wait_until

pytestmark = [pytest.mark.integration, requires_fuse]


def test_root_lists_every_collection_of_the_index(s3_mount, s3_proxy):
    index = IndexFiles.bundled().index
    expected = {escape_name(c) for (c,) in duckdb.sql(f"SELECT DISTINCT collection_id FROM '{index}'").fetchall()}
    s3_proxy.log.clear()
    assert set(os.listdir(s3_mount.path)) == expected | {".idcfs"}
    assert len(expected) > 100
    assert s3_proxy.log.count() == 0  # the tree above series level never touches the network


def test_each_generated_series_has_its_files_with_exact_sizes(s3_mount, generated):
    for series in generated:
        folder = s3_mount.series_dir(series)
        assert sorted(os.listdir(folder)) == [f.name for f in series.files]
        for f in series.files:
            st = os.stat(folder / f.name)
            assert stat.S_ISREG(st.st_mode)
            assert st.st_size == f.size
            assert st.st_mode & 0o222 == 0


def test_series_listing_is_fetched_once(s3_mount, s3_proxy, generated):
    folder = s3_mount.series_dir(generated[2])
    os.listdir(folder)  # may or may not be the first access in this module
    s3_proxy.log.clear()
    for _ in range(3):
        os.listdir(folder)
        for name in os.listdir(folder):
            os.stat(folder / name)
    assert s3_proxy.log.count() == 0


def test_whole_files_are_byte_identical(s3_mount, generated):
    for series in generated:
        for f in series.files:
            with open(s3_mount.series_dir(series) / f.name, "rb") as mounted:
                assert mounted.read() == source_file(series, f.name).read_bytes()


def test_random_ranges_block_crossings_and_reads_past_eof(s3_mount, generated):
    series = generated[0]
    f = series.files[1]
    expected = source_file(series, f.name).read_bytes()
    block = 64 * 1024
    rng = random.Random(7)
    ranges = [
        (0, 10),
        (block - 5, 10),
        (2 * block - 1, 2),
        (block, block),
        (len(expected) - 3, 100),
        (len(expected), 10),
        (len(expected) + 5000, 10),
        (0, len(expected) + 1000),
    ]
    ranges += [(rng.randrange(len(expected)), rng.randrange(1, 3 * block)) for _ in range(40)]
    fd = os.open(s3_mount.series_dir(series) / f.name, os.O_RDONLY)
    try:
        for offset, size in ranges:
            assert os.pread(fd, size, offset) == expected[offset : offset + size], (offset, size)
    finally:
        os.close(fd)


def test_concurrent_readers_get_identical_bytes(s3_mount, generated):
    series = generated[3]
    paths = [(s3_mount.series_dir(series) / f.name, source_file(series, f.name)) for f in series.files]

    def read(pair):
        mounted, source = pair
        return mounted.read_bytes() == source.read_bytes()

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, paths * 4))


def test_pydicom_reads_from_the_mount(s3_mount, generated):
    ct = next(s for s in generated if s.modality == "CT")
    dataset = pydicom.dcmread(s3_mount.series_dir(ct) / ct.files[0].name)
    assert dataset.SeriesInstanceUID == ct.series_uid
    assert dataset.pixel_array.shape == (256, 256)
    sr = next(s for s in generated if s.modality == "SR")
    assert pydicom.dcmread(s3_mount.series_dir(sr) / sr.files[0].name).Modality == "SR"


def test_xattrs_on_series_folders_and_files(s3_mount, generated):
    series = next(s for s in generated if s.aws_bucket == "idc-open-data-cr")
    folder = s3_mount.series_dir(series)
    assert os.getxattr(folder, "user.idc.crdc_series_uuid").decode() == series.crdc_series_uuid
    assert os.getxattr(folder, "user.idc.url").decode() == f"s3://idc-open-data-cr/{series.crdc_series_uuid}/*"
    assert os.getxattr(folder, "user.idc.license").decode().startswith("CC BY")
    assert os.getxattr(folder, "user.idc.source_doi")
    name = series.files[0].name
    assert (
        os.getxattr(folder / name, "user.idc.url").decode() == f"s3://idc-open-data-cr/{series.crdc_series_uuid}/{name}"
    )
    assert "user.idc.crdc_series_uuid" in os.listxattr(folder / name)
    with pytest.raises(OSError) as missing:
        os.getxattr(folder, "user.idc.no_such_attribute")
    assert missing.value.errno == errno.ENODATA


def test_directory_times_are_stable_release_dates(s3_mount, generated):
    first = os.stat(s3_mount.path / generated[0].collection_id)
    again = os.stat(s3_mount.path / generated[0].collection_id)
    assert first.st_mtime == again.st_mtime > 1.5e9  # a release date, never "now"
    assert first.st_mtime == first.st_ctime


def test_unknown_names_are_enoent_without_a_request(s3_mount, s3_proxy, generated):
    series = generated[0]
    os.listdir(s3_mount.series_dir(series))
    s3_proxy.log.clear()
    study = s3_mount.series_dir(series).parent
    unknown = [
        s3_mount.path / "no_such_collection",
        s3_mount.path / series.collection_id / "no-such-patient",
        study.parent / "1.2.3.4.5",
        study / "CT_1.2.3.4.5",
        s3_mount.series_dir(series) / "no-such-instance.dcm",
        s3_mount.series_dir(series) / series.files[0].name / "deeper",
        s3_mount.path / ".hidden",
    ]
    for path in unknown:
        with pytest.raises(OSError) as error:
            os.stat(path)
        assert error.value.errno in (errno.ENOENT, errno.ENOTDIR), path
    assert s3_proxy.log.count() == 0


@pytest.mark.parametrize(
    "operation",
    ["write", "create", "mkdir", "unlink", "rmdir", "rename", "truncate", "chmod", "symlink", "setxattr", "utime"],
)
def test_every_write_is_erofs(s3_mount, generated, operation):
    series = generated[0]
    folder = s3_mount.series_dir(series)
    existing = folder / series.files[0].name
    actions = {
        "write": lambda: os.open(existing, os.O_WRONLY),
        "create": lambda: os.open(folder / "new.dcm", os.O_WRONLY | os.O_CREAT, 0o644),
        "mkdir": lambda: os.mkdir(folder / "new"),
        "unlink": lambda: os.unlink(existing),
        "rmdir": lambda: os.rmdir(folder),
        "rename": lambda: os.rename(existing, folder / "renamed.dcm"),
        "truncate": lambda: os.truncate(existing, 0),
        "chmod": lambda: os.chmod(existing, 0o777),
        "symlink": lambda: os.symlink(existing, folder / "link"),
        "setxattr": lambda: os.setxattr(folder, "user.idc.x", b"1"),
        "utime": lambda: os.utime(existing, (0, 0)),
    }
    with pytest.raises(OSError) as error:
        actions[operation]()
    assert error.value.errno == errno.EROFS
    assert existing.read_bytes() == source_file(series, series.files[0].name).read_bytes()


def test_statfs_reports_a_read_only_filesystem(s3_mount):
    info = os.statvfs(s3_mount.path)
    assert info.f_flag & os.ST_RDONLY
    assert info.f_namemax == 255


def test_gcs_source_reads_the_same_bytes(gcs_mount, gcs_proxy, generated):
    for series in generated:
        folder = gcs_mount.series_dir(series)
        assert sorted(os.listdir(folder)) == [f.name for f in series.files]
        for f in series.files:
            assert os.stat(folder / f.name).st_size == f.size
            assert (folder / f.name).read_bytes() == source_file(series, f.name).read_bytes()
    mr = next(s for s in generated if s.aws_bucket == "idc-open-data-two")
    assert (
        os.getxattr(gcs_mount.series_dir(mr), "user.idc.url").decode() == f"gs://idc-open-idc1/{mr.crdc_series_uuid}/*"
    )
    assert gcs_proxy.log.count(contains="idc-open-idc1") > 0  # the GCS bucket name, not the AWS one
    assert gcs_proxy.log.count(contains="idc-open-data-two") == 0
    ct = next(s for s in generated if s.modality == "CT")
    assert pydicom.dcmread(gcs_mount.series_dir(ct) / ct.files[0].name).Modality == "CT"


@pytest.mark.skipif(os.getuid() != 0, reason="only root may set a mount's readahead")
def test_the_kernel_reads_ahead_a_mebibyte_unless_told_otherwise(mount_factory, s3_proxy):
    """The value is set just after the kernel's INIT handshake, so it is waited for. It must
    also hold: the kernel lowers it to 128 KiB if it takes INIT's answer after our write (it
    did, on every other mount of a benchmark: a 500 MB read then took 8x the requests)."""
    for options, kib in (((), 1024), ((), 1024), ((), 1024), (("--kernel-readahead", "4M"), 4096)):
        mount = mount_factory(s3_proxy.url, *options)
        os.stat(mount.path)  # a request: the kernel has taken INIT's answer
        assert wait_until(lambda mount=mount, kib=kib: kernel_readahead(mount.path) == kib << 10, 5)
        os.listdir(mount.path)
        assert kernel_readahead(mount.path) == kib << 10
    mount = mount_factory(s3_proxy.url, "--kernel-readahead", "0")
    os.listdir(mount.path)
    assert kernel_readahead(mount.path) == 128 << 10  # the kernel's own
