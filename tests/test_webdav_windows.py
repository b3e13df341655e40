"""What a Windows user with default settings sees of the share: every folder reachable, the
largest (nlst's 26,411 patients, a 1,503-file series) in groups whose every listing stays under
the Mini-Redirector's ``FileAttributesLimitInBytes`` (1,000,000 bytes by default; Microsoft's
"WebDAV Redirector registry settings", and sabre/dav's notes on Windows: a longer answer shows
the folder empty). Requests as Windows sends them: its User-Agent, ``translate: f``, an allprop
PROPFIND with ``Content-Length: 0`` on a folder URL without its slash."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

import pytest

from idcfs.catalog.layout import escape_name
from idcfs.vfs.groups import GROUP_SIZE, SEPARATOR
from tests.test_webdav import Share, start_serve, stop_serve, url_of

#: Windows' default cap on a PROPFIND answer (FileAttributesLimitInBytes).
WINDOWS_LISTING_LIMIT = 1_000_000
WINDOWS = {
    "User-Agent": "Microsoft-WebDAV-MiniRedir/10.0.19045",
    "translate": "f",
    "Depth": "1",
    "Content-Length": "0",
    "Connection": "Keep-Alive",
}

WINDOWS_GET = {"User-Agent": WINDOWS["User-Agent"], "translate": "f", "Connection": "Keep-Alive"}


@pytest.fixture(scope="module")
def share(many_objects, s3_proxy, tmp_path_factory) -> Iterator[Share]:
    served = start_serve(
        tmp_path_factory.mktemp("serve-windows"), s3_proxy.url,
        f"--collection={many_objects.series.collection_id}", "--collection=nlst",
    )  # fmt: skip
    yield served
    stop_serve(served)


def windows_listing(share: Share, path: str) -> list[str]:
    """The hrefs of a folder's members as Windows asks for them; the answer's size checked."""
    status, _, body = share.request("PROPFIND", url_of(path.strip("/")), WINDOWS)
    assert status == 207, (path, status)
    assert len(body) < WINDOWS_LISTING_LIMIT, f"{path}: {len(body):,} bytes"
    hrefs = [unquote(h) for h in re.findall(rb"<D:href>([^<]*)</D:href>", body, flags=0)]
    hrefs = [h.decode() if isinstance(h, bytes) else h for h in hrefs]
    own = "/" + path.strip("/")
    return [h for h in hrefs if h.rstrip("/") != own.rstrip("/")]


def names(hrefs: list[str]) -> list[str]:
    return [h.rstrip("/").rsplit("/", 1)[1] for h in hrefs]


def test_windows_reaches_every_patient_of_nlst_through_groups_each_listing_under_its_cap(share):
    groups = names(windows_listing(share, "nlst"))
    assert 26_000 / GROUP_SIZE < len(groups) <= GROUP_SIZE and all(SEPARATOR in g for g in groups)
    patients = []
    for group in groups:
        inside = names(windows_listing(share, f"nlst/{group}"))
        assert inside[0] == group.split(SEPARATOR)[0] and inside[-1] == group.split(SEPARATOR)[1]
        patients += inside
    # Every other client sees nlst whole, and the same patients.
    status, _, body = share.request("PROPFIND", "/nlst/", {"Depth": "1"})
    everyone = names([unquote(h.decode()) for h in re.findall(rb"<D:href>([^<]*)</D:href>", body)][1:])
    assert status == 207 and patients == everyone and len(patients) > 26_000
    # A patient's folder through its group is the patient's folder.
    studies = names(windows_listing(share, f"nlst/{groups[0]}/{patients[0]}"))
    assert studies and studies == names(windows_listing(share, f"nlst/{patients[0]}"))


def test_windows_reads_every_file_of_a_large_series_through_its_groups(share, many_objects):
    series = many_objects.series
    shown = {escape_name(name): name for name in many_objects.names}
    groups = names(windows_listing(share, series.path))
    assert len(groups) == -(-len(shown) // GROUP_SIZE)
    seen = []
    for group in groups:
        files = names(windows_listing(share, f"{series.path}/{group}"))
        seen += files
        name = files[-1]
        status, headers, body = share.request("GET", url_of(f"{series.path}/{group}/{name}"), WINDOWS_GET)
        assert status == 200 and body == many_objects.payload(shown[name])
        assert int(headers["Content-Length"]) == len(body)
    assert sorted(seen) == sorted(shown)
    # Other clients list the series whole.
    status, _, body = share.request("PROPFIND", url_of(series.path) + "/", {"Depth": "1"})
    assert status == 207 and body.count(b"<D:response>") == len(shown) + 1


@pytest.mark.integration
def test_a_path_windows_shows_opens_the_same_file_on_a_mount_and_through_idc(
    share, many_objects, s3_proxy, mount_factory
):
    from idcfs.fsspec import IdcFileSystem

    series = many_objects.series
    shown = {escape_name(name): name for name in many_objects.names}
    group = names(windows_listing(share, series.path))[1]
    name = names(windows_listing(share, f"{series.path}/{group}"))[0]
    windows_path = f"{series.path}/{group}/{name}"
    mount = mount_factory(s3_proxy.url, f"--collection={series.collection_id}")
    assert (mount.path / windows_path).read_bytes() == many_objects.payload(shown[name])
    assert not any(SEPARATOR in p.name for p in (mount.path / series.path).iterdir())  # listed as it is
    fs = IdcFileSystem(endpoint_url=s3_proxy.url, collection=[series.collection_id], skip_instance_cache=True,
                       cache_dir=str(mount.path.parent / "idc-cache"))  # fmt: skip
    try:
        assert fs.cat_file(windows_path) == many_objects.payload(shown[name])
    finally:
        fs.vfs.close()
