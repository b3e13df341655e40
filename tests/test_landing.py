"""A demand read answered from a block while it still arrives: the bytes it needs as soon as
they are in, nothing fetched twice, never a wrong byte (a body cut short is resumed)."""

from __future__ import annotations

import threading

import pytest

from idcfs.blocks.landing import Landing
from idcfs.remote.retry import StoreError
from tests.conftest import source_file, wait_until
from tests.test_vfs import open_vfs
from tests.testbed.proxy import CountingProxy


def test_a_landing_answers_a_range_once_its_bytes_are_in_then_from_the_block():
    landing = Landing("k")
    buffer = bytearray(b"abcdefgh")
    landing.arrived(buffer, 4)
    assert landing.part(0, 4, timeout=1) == b"abcd"
    with pytest.raises(StoreError, match="gave up"):
        landing.part(2, 6, timeout=0.05)  # not in yet
    landing.arrived(bytearray(b"abcd"), 2)  # a retry starting over: not reported until it passes
    assert landing.part(1, 4, timeout=1) == b"bcd"
    waiting = []
    reader = threading.Thread(target=lambda: waiting.append(bytes(landing.part(4, 8, timeout=5))))
    reader.start()
    landing.finish(b"abcdefgh")
    reader.join(5)
    assert waiting == [b"efgh"]


def test_a_landing_hands_its_fetchs_error_to_readers_still_waiting():
    landing = Landing("k")
    landing.arrived(bytearray(b"ab"), 2)
    landing.fail(StoreError("boom"))
    with pytest.raises(StoreError, match="boom"):
        landing.part(0, 4, timeout=1)


@pytest.fixture
def ct_file(generated):
    series = next(s for s in generated if s.modality == "CT" and s.aws_bucket == "idc-open-data")
    return series, series.files[0]


def block_key(vfs, series, name: str) -> str:
    return f"{series.crdc_series_uuid}/{name}@{vfs.reader.block_size}#0"


def test_a_header_read_is_answered_while_its_block_still_arrives(ct_file, s3_upstream, tmp_path):
    series, file = ct_file
    expected = source_file(series, file.name).read_bytes()
    with CountingProxy(s3_upstream.url) as proxy:
        vfs = open_vfs(tmp_path, proxy.url, [series.collection_id], prefetch="off", block_size="1M")
        try:
            vfs.list(series.path)
            proxy.settle()
            proxy.log.clear()  # the listing's body aside
            # The object's body comes at 64 KiB/s: about two seconds for it whole.
            proxy.fault = lambda method, path: "slow:65536" if method == "GET" and file.name in path else None
            opened = vfs.open(f"{series.path}/{file.name}")
            header = bytes(opened.read(0, 4096))
            key = block_key(vfs, series, file.name)
            assert header == expected[:4096]
            assert not vfs.reader.cache.contains(key)  # answered before the block was whole
            assert wait_until(lambda: vfs.reader.cache.contains(key), timeout=30)
            assert bytes(opened.read(0, file.size)) == expected
            opened.close()
            proxy.settle()
            assert proxy.log.count("GET", file.name) == 1  # nothing fetched twice
            assert proxy.log.body_bytes == file.size
        finally:
            proxy.fault = None
            vfs.close()


def test_a_body_cut_short_is_resumed_and_every_reader_gets_the_right_bytes(ct_file, s3_upstream, tmp_path):
    series, file = ct_file
    expected = source_file(series, file.name).read_bytes()
    cut = []

    def fault(method: str, path: str):
        if method == "GET" and file.name in path and not cut:
            cut.append(path)
            return "truncate"  # half the body, then the connection goes
        return None

    with CountingProxy(s3_upstream.url) as proxy:
        vfs = open_vfs(tmp_path, proxy.url, [series.collection_id], prefetch="off", block_size="1M")
        try:
            vfs.list(series.path)
            proxy.settle()
            proxy.log.clear()  # the listing's body aside
            proxy.fault = fault
            opened = [vfs.open(f"{series.path}/{file.name}") for _ in range(4)]
            half, end = file.size // 2, file.size
            ranges = [(0, 4096), (half - 100, half + 100), (end - 10, end), (100, 70000)]
            answers: list[bytes] = [b""] * 4

            def read(k: int) -> None:
                start, stop = ranges[k]
                answers[k] = bytes(opened[k].read(start, stop - start))

            threads = [threading.Thread(target=read, args=(k,)) for k in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert answers == [expected[a:b] for a, b in ranges]
            for handle in opened:
                handle.close()
            proxy.settle()
            assert cut and proxy.log.count("GET", file.name) == 2  # the cut one, then the rest only
            assert proxy.log.body_bytes == file.size  # half, then the other half: nothing twice
        finally:
            proxy.fault = None
            vfs.close()
