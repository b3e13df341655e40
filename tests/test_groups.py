"""A large folder in groups of its entries (``idcfs.vfs.groups``), in process: the spans, and a
real 1,503-file series and nlst's 26,411 patients through the core, grouped and not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from idcfs.vfs.groups import GROUP_SIZE, SEPARATOR, spans
from idcfs.vfs.vfs import Vfs
from tests.test_vfs import open_vfs


def test_spans_cover_every_entry_once_with_at_most_the_group_size_each_level():
    assert spans(0, GROUP_SIZE) == []  # few enough: shown as they are
    for count in (GROUP_SIZE + 1, 1503, 26_411, 91_980, GROUP_SIZE**2 + 7, 593_000):
        top = spans(0, count)
        assert 1 < len(top) <= GROUP_SIZE
        assert top[0][0] == 0 and top[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(top, top[1:], strict=False))  # contiguous, in order
        for start, stop in top:  # a group too large to show is shown as groups again
            inner = spans(start, stop)
            assert (stop - start <= GROUP_SIZE) == (inner == [])
            assert all(b - a <= GROUP_SIZE for a, b in inner)


@pytest.fixture(scope="module")
def vfs(many_objects, s3_proxy, tmp_path_factory) -> Iterator[Vfs]:
    tree = open_vfs(
        tmp_path_factory.mktemp("groups"), s3_proxy.url, [many_objects.series.collection_id, "nlst"], prefetch="off"
    )
    yield tree
    tree.close()


def test_a_large_series_folder_lists_as_groups_holding_every_file_once(vfs, many_objects):
    path = many_objects.series.path
    everything = list(vfs.list_sized(path))
    groups = list(vfs.list_sized(path, grouped=True))
    assert len(groups) == -(-len(everything) // GROUP_SIZE)
    assert all(is_dir and SEPARATOR in name for name, is_dir, _ in groups)
    seen = []
    for name, _, _ in groups:
        entry = vfs.stat(f"{path}/{name}")
        members = list(vfs.list_sized(f"{path}/{name}"))
        assert entry.is_dir and entry.children == len(members) <= GROUP_SIZE
        assert name == f"{members[0][0]}{SEPARATOR}{members[-1][0]}"
        assert [n for n, _ in vfs.list(f"{path}/{name}")] == [n for n, _, _ in members]
        seen += members
    assert seen == everything  # every file once, in order, with its size


def test_a_file_under_a_group_is_the_same_file_with_its_size_bytes_and_metadata(vfs, many_objects):
    path = many_objects.series.path
    group = next(iter(vfs.list(path, grouped=True)))[0]
    name = next(iter(vfs.list(f"{path}/{group}")))[0]
    through, direct = f"{path}/{group}/{name}", f"{path}/{name}"
    assert vfs.stat(through) == vfs.stat(direct)
    assert vfs.xattrs(through) == vfs.xattrs(direct)
    opened = vfs.open(through)
    try:
        assert bytes(opened.read(0, opened.size)) == bytes(vfs.open(direct).read(0, opened.size))
    finally:
        opened.close()


def test_nlst_lists_its_patients_in_groups_and_a_patient_opens_through_its_group_with_no_request(vfs, s3_proxy):
    s3_proxy.log.clear()
    patients = [name for name, _ in vfs.list("nlst")]
    groups = [name for name, _ in vfs.list("nlst", grouped=True)]
    assert len(patients) > 26_000 and len(groups) == -(-len(patients) // GROUP_SIZE)
    last = groups[-1]
    inside = [name for name, _ in vfs.list(f"nlst/{last}")]
    assert inside == patients[-len(inside) :]
    studies = list(vfs.list(f"nlst/{last}/{inside[0]}"))
    assert studies == list(vfs.list(f"nlst/{inside[0]}"))
    assert s3_proxy.log.requests == []  # above the series level: the catalog alone


def test_a_small_folder_is_never_grouped_and_group_names_that_are_not_groups_are_not_found(vfs, many_objects):
    path = many_objects.series.path
    collection, study = many_objects.series.collection_id, path.rsplit("/", 1)[0]
    for small in ("", study):
        assert list(vfs.list(small, grouped=True)) == list(vfs.list(small))
    for wrong in (f"a{SEPARATOR}b", f"{path}/x{SEPARATOR}y", f"{collection}/x{SEPARATOR}y/z"):
        with pytest.raises(FileNotFoundError):
            vfs.stat(wrong)
    group = next(iter(vfs.list(path, grouped=True)))[0]
    with pytest.raises(IsADirectoryError):
        vfs.open(f"{path}/{group}")
