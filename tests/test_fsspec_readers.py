"""Libraries that read ``idc://`` as their users call them, in processes that never mount:
universal-pathlib's ``UPath``, wsidicom's ``WsiDicom.open`` of a slide folder, highdicom's lazy
frame retrieval (counted at a proxy of its own), and ``idcfs.dask.map_series`` on a real
LocalCluster whose workers open ``idc://`` themselves."""

from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Iterator

import pytest

from idcfs.fsspec import IdcFileSystem
from tests.conftest import TESTDATA, settled, source_file
from tests.testbed.dicomgen import GeneratedSeries
from tests.testbed.proxy import CountingProxy

BLOCK = 64 << 10


@pytest.fixture
def options(s3_proxy, tmp_path) -> dict:
    return {"endpoint_url": s3_proxy.url, "cache_dir": str(tmp_path / "cache"), "block_size": "64K"}


def local_folder(series: GeneratedSeries):
    return TESTDATA / "data" / "s3" / series.aws_bucket / series.crdc_series_uuid


def test_upath_is_a_pathlib_path_on_the_tree(generated, options):
    from upath import UPath

    from idcfs.fsspec.upath import IdcPath

    series = next(s for s in generated if s.modality != "SM" and len(s.files) > 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # universal-pathlib knows the protocol: no "not implemented"
        folder = UPath(f"idc://{series.path}", collection=[series.collection_id], **options)
    assert isinstance(folder, IdcPath) and folder.is_dir() and str(folder) == f"idc://{series.path}"
    assert (
        folder.name == series.path.rsplit("/", 1)[1] and str(folder.parent) == f"idc://{series.path.rsplit('/', 1)[0]}"
    )
    files = sorted(folder.iterdir())
    assert [p.name for p in files] == sorted(f.name for f in series.files)
    assert sorted(p.name for p in folder.glob("*.dcm")) == [p.name for p in files]
    first = files[0]
    assert first.stat().st_size == series.files[0].size
    assert first.read_bytes() == source_file(series, first.name).read_bytes()
    assert not (folder / "no_such_object.dcm").exists()
    with pytest.raises(FileNotFoundError):
        (folder / "no_such_object.dcm").read_bytes()


def test_wsidicom_opens_a_slide_folder_by_url_and_reads_regions_as_from_disk(slide, options):
    wsidicom = pytest.importorskip("wsidicom")
    url = f"idc://{slide.path}/"
    with (
        wsidicom.WsiDicom.open(local_folder(slide)) as expected,
        wsidicom.WsiDicom.open(url, file_options={"collection": [slide.collection_id], **options}) as seen,
    ):
        assert [level.size for level in seen.levels] == [level.size for level in expected.levels]
        rng = random.Random(11)
        for _ in range(12):
            level = rng.randrange(len(seen.levels))
            width, height = seen.levels[level].size.width, seen.levels[level].size.height
            x, y = rng.randrange(0, width - 256), rng.randrange(0, height - 256)
            a = seen.read_region((x, y), level, (256, 256))
            b = expected.read_region((x, y), level, (256, 256))
            assert a.tobytes() == b.tobytes()


def test_highdicom_lazy_frame_retrieval_fetches_about_the_frame(s3_upstream, slide, tmp_path):
    """A header, then one frame of a multi-frame object: the header's block and the frame's
    blocks, counted once background work has settled; never the whole object."""
    hd = pytest.importorskip("highdicom")
    level0 = max(slide.files, key=lambda f: f.size)
    with CountingProxy(s3_upstream.url) as proxy:
        fs = IdcFileSystem(
            skip_instance_cache=True,
            endpoint_url=proxy.url,
            cache_dir=tmp_path,
            block_size="64K",
            collection=[slide.collection_id],
        )
        try:
            fs.info(f"{slide.path}/{level0.name}")  # the listing, not counted below
            proxy.log.clear()
            with fs.open(f"{slide.path}/{level0.name}") as f:
                image = hd.imread(f, lazy_frame_retrieval=True)
                frame = image.get_raw_frame(image.NumberOfFrames // 2)
            expected = hd.imread(str(local_folder(slide) / level0.name)).get_raw_frame(image.NumberOfFrames // 2)
            assert frame == expected
            assert settled(proxy)
            assert proxy.log.body_bytes <= len(frame) + 3 * BLOCK  # the header's block, the frame's (two at most)
            assert proxy.log.body_bytes < level0.size / 20
        finally:
            fs.vfs.close()


def series_digest(folder) -> dict:
    """What a task computes on a worker: the series' files, as ``pathlib`` code reads them."""
    import pydicom

    files = sorted(folder.iterdir(), key=lambda p: p.name)
    with files[0].open("rb") as handle:
        uid = str(pydicom.dcmread(handle, stop_before_pixels=True).SeriesInstanceUID)
    return {
        "files": len(files),
        "uid": uid,
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as local,
        Client(local) as client,
    ):
        yield client


def test_map_series_on_workers_without_a_mount_reads_through_idc(cluster, generated, options):
    import pandas as pd

    from idcfs.dask import map_series

    cohort = [s for s in generated if s.modality != "SM" and s.files][:3]
    fs = IdcFileSystem(skip_instance_cache=True, collection=sorted({s.collection_id for s in cohort}), **options)
    frame = pd.DataFrame({"SeriesInstanceUID": [s.series_uid for s in cohort] + ["1.2.3.4.5"]})
    table = map_series(cluster, series_digest, frame, fs=fs)
    assert list(table["series"]) == list(frame["SeriesInstanceUID"])
    failed = table[table["error"].notna()]
    assert list(failed["series"]) == ["1.2.3.4.5"] and "not in the idc:// tree" in failed["error"].iloc[0]
    for series, (_, row) in zip(cohort, table[table["error"].isna()].iterrows(), strict=True):
        assert row["path"] == f"idc://{series.path}" and row["uid"] == series.series_uid
        expected = {f.name: hashlib.sha256(source_file(series, f.name).read_bytes()).hexdigest() for f in series.files}
        assert row["sha256"] == expected
    with pytest.raises(TypeError, match="one of them"):
        map_series(cluster, series_digest, frame)
