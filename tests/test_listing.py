"""Series listings as buffers: the table a LIST builds, its disk form, the folder made of it.

Pure logic; listings fetched from real servers are tested in test_store.py and test_trust.py.
"""

from __future__ import annotations

import json

import pytest

from idcfs.catalog.layout import escape_name
from idcfs.remote.objects import ObjectInfo, ObjectTable, ObjectTableBuilder
from idcfs.vfs.listing import SeriesListing
from idcfs.vfs.listings import ListingCache

AWKWARD = ["b.dcm", "a.dcm", "with space.dcm", "percent%20.dcm", "ünïcødé-画像.dcm", ".", "x/y", "plus+sign.dcm"]


def objects(names=AWKWARD):
    return [ObjectInfo(name, 100 + k, f"etag-{k}") for k, name in enumerate(names)]


def test_a_table_is_sorted_bytewise_whatever_order_the_pages_came_in():
    table = ObjectTable.of(objects())
    assert [o.name for o in table] == sorted(AWKWARD, key=str.encode)
    assert {o.name: (o.size, o.etag) for o in table} == {o.name: (o.size, o.etag) for o in objects()}


def test_a_table_in_order_is_not_copied_to_be_sorted():
    builder = ObjectTableBuilder()
    builder.extend(sorted(objects(), key=lambda o: o.name.encode()))
    table = builder.build()
    assert table.sizes is builder._sizes  # the builder's own buffer: no sorted copy


def test_the_disk_form_round_trips_and_damage_is_refused():
    table = ObjectTable.of(objects())
    data = table.to_bytes()
    assert list(ObjectTable.from_bytes(data)) == list(table)
    assert len(ObjectTable.from_bytes(ObjectTable.of([]).to_bytes())) == 0
    for damaged in (data[:-3], data + b"x", b"idcfs-objects 9\n{}\n", data.replace(b'"count": 8', b'"count": 9')):
        with pytest.raises((ValueError, KeyError, TypeError, IndexError)):
            ObjectTable.from_bytes(damaged)


def test_a_folder_escapes_names_and_finds_each_object_under_its_escaped_name():
    listing = SeriesListing.of(ObjectTable.of(objects()))
    shown = list(listing.entry_names())
    assert shown == sorted((escape_name(n) for n in AWKWARD), key=str.encode)
    for info in objects():
        assert listing.get(escape_name(info.name)) == info
    assert listing.get("x/y") is None and listing.get("percent%20.dcm") is None  # only escaped names exist
    assert listing.get("\udcff") is None  # a name no object can have


def test_a_folder_without_escapes_shares_the_tables_buffers():
    table = ObjectTable.of(objects(["1.dcm", "2.dcm", "3.dcm"]))
    listing = SeriesListing.of(table)
    assert listing.names is table.names and listing.raw_names == {}


def test_a_listing_costs_about_its_bytes():
    names = [f"{k:08d}-0000-0000-0000-000000000000.dcm" for k in range(10_000)]
    listing = SeriesListing.of(ObjectTable.of(ObjectInfo(n, 1, "d41d8cd98f00b204e9800998ecf8427e") for n in names))
    per_object = listing.approximate_bytes() / len(names)
    assert 80 < per_object < 110  # 40 name bytes, 32 etag bytes, three int64s


def test_listings_stored_by_the_previous_version_are_read(tmp_path):
    cache = ListingCache(SeriesListing.of, SeriesListing.approximate_bytes, tmp_path, 1 << 20)
    cache._disk.cache.set("uuid", json.dumps([["b.dcm", 2, "e2"], ["a.dcm", 1, "e1"]]).encode())
    listing = cache.get_or_fetch("uuid", lambda: pytest.fail("a listing on disk needs no request"))
    assert list(listing) == [ObjectInfo("a.dcm", 1, "e1"), ObjectInfo("b.dcm", 2, "e2")]


def test_a_damaged_listing_on_disk_is_fetched_again(tmp_path):
    cache = ListingCache(SeriesListing.of, SeriesListing.approximate_bytes, tmp_path, 1 << 20)
    cache._disk.cache.set("uuid", ObjectTable.of(objects()).to_bytes()[:-5])
    listing = cache.get_or_fetch("uuid", lambda: ObjectTable.of(objects(["a.dcm"])))
    assert [o.name for o in listing] == ["a.dcm"]
    assert cache.flush(10)
    again = ListingCache(SeriesListing.of, SeriesListing.approximate_bytes, tmp_path, 1 << 20)
    assert [o.name for o in again.get_or_fetch("uuid", lambda: pytest.fail("stored again"))] == ["a.dcm"]


def test_a_fetched_listing_is_answered_before_the_disk_has_it_and_flush_writes_it(tmp_path):
    """The lookup that fetched a listing does not wait for the disk's transaction; ``flush``
    (a tree's close, idc:// at exit) waits for it, within its time."""
    import threading

    cache = ListingCache(SeriesListing.of, SeriesListing.approximate_bytes, tmp_path, 1 << 20)
    disk, let_go = cache._disk.cache, threading.Event()

    class SlowDisk:
        def get(self, key):
            return disk.get(key)

        def set(self, key, value):
            assert let_go.wait(30)
            return disk.set(key, value)

    cache._disk.cache = SlowDisk()
    listing = cache.get_or_fetch("uuid", lambda: ObjectTable.of(objects(["a.dcm"])))
    assert [o.name for o in listing] == ["a.dcm"] and disk.get("uuid") is None  # answered, not yet written
    assert not cache.flush(0.2)  # the write is held: flush says so, within its time
    let_go.set()
    assert cache.flush(10)
    again = ListingCache(SeriesListing.of, SeriesListing.approximate_bytes, tmp_path, 1 << 20)
    assert [o.name for o in again.get_or_fetch("uuid", lambda: pytest.fail("on disk"))] == ["a.dcm"]


def test_the_listing_disk_is_used_from_one_thread_and_a_stalled_disk_is_a_miss(tmp_path):
    """Reads from many threads are answered by the disk's own thread (diskcache opens a
    connection per thread that touches it: one here, whatever asks); a read the disk does not
    answer in time is a miss, not a hang; a write that fails pauses writes, and close stops."""
    import threading

    from idcfs.vfs.listing_disk import ListingDisk

    disk = ListingDisk(tmp_path / "listings")
    disk.cache.set("there", b"stored")
    used_by: set[str] = set()
    real_get = disk.cache.get

    def get(key, *args, **kwargs):
        used_by.add(threading.current_thread().name)
        return real_get(key, *args, **kwargs)

    disk.cache.get = get
    found: list[bytes | None] = []
    readers = [threading.Thread(target=lambda: found.append(disk.get("there", 10))) for _ in range(8)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(30)
    assert found == [b"stored"] * 8 and used_by == {"idcfs-listing-disk"}
    assert disk.get("absent", 10) is None

    held = threading.Event()
    asked: list[str] = []
    disk.cache.get = lambda key, *a, **k: asked.append(key) or held.wait(30) and None
    assert disk.get("there", 0.2) is None  # the disk is stalled: a miss, in time
    assert disk.get("given up", 0.2) is None  # behind it, and given up on: never read
    attempts: list[str] = []

    def failing_set(key, value):
        attempts.append(key)
        raise OSError(28, "No space left on device")

    disk.cache.set = failing_set
    for key in ("one", "two", "three"):
        disk.put(key, b"1")  # queued behind the stalled read
    held.set()
    assert disk.flush(10)
    assert attempts == ["one"], "writes queued before a failure are dropped, not each tried"
    disk.put("four", b"2")  # within the pause: not even queued
    assert asked == ["there"]
    assert disk.flush(0) and disk.close(10)
    assert disk.get("there", 10) is None  # closed: nothing asked of it
