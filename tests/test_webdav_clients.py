"""``idcfs serve`` answers what the desktop WebDAV clients send. None of them runs here, so each
one's requests are replayed as its source writes them: its User-Agent, headers and bodies, on
one kept-alive connection as the client keeps it, and its answers read as the client reads them.

Sources (read for these tests; quoted where a test replays them):

- Finder: Apple's webdavfs, ``apple-oss-distributions/webdavfs`` (webdavfs-403),
  ``mount.tproj/webdav_network.c``: ``InitUserAgentHeaderValue`` (``WebDAVFS/%s (%.8lx)
  %s/%s (%s)``), ``network_getDAVLevel`` and ``ParseDAVLevel`` (OPTIONS; DAV class 1 mounts
  read-only), ``network_stat`` and ``network_readdir`` (the 4-property PROPFIND at depth 0 and
  1), ``network_statfs`` (the quota PROPFIND), ``network_get``'s conditional headers
  (``If-Modified-Since``, ``Range: bytes=N-`` with ``If-Range``: the Last-Modified date),
  ``network_read`` (``Range: bytes=a-b``, a longer answer cut to the range);
  ``mount.tproj/webdav_parse.c`` ``GetComponentName`` (which hrefs of a listing are members);
  ``mount.tproj/webdav_agent.c`` (the mount URL gets a trailing slash). sabre/dav's Finder page
  (``sabre-io/sabre.io`` ``source/dav/clients/finder.md``): the probes a new mount sends
  (``mach_kernel``, ``.Spotlight-V100``, ``._.``, ``Backups.backupdb``, ``.metadata_never_index``,
  ``Contents``, ``.DS_Store``, ...).
- Windows (WebClient's Mini-Redirector): Microsoft's MS-WDV (Translate, X-MSDAVEXT: the client
  sends OPTIONS first) and MS-WDVSE 2.2.1 / 3.1.5.1 (``Translate: f``) and 3.2.5.2
  (``MS-Author-Via: DAV`` in the OPTIONS answer); sabre/dav's Windows page
  (``source/dav/clients/windows.md``: User-Agent ``Microsoft-WebDAV-MiniRedir/<version>``,
  ``MS-Author-Via``, ``Translate: f`` on every request); allprop with ``Content-Length: 0`` on
  a folder URL without its slash (tests/test_webdav_windows.py replays its listings).
- gvfs: ``GNOME/gvfs`` ``daemon/gvfsbackenddav.c``: ``try_mount_send_opts`` / ``try_mount_opts_cb``
  / ``try_mount_stat_cb`` (OPTIONS, then a depth-1 PROPFIND of ``stat_location_start``'s body,
  then the same for each parent up to ``/``), ``propfind_request_new`` with ``ls_propnames``
  (query_info, enumerate), ``path_equal(..., relax)``; ``daemon/gvfsbackendhttp.c`` (User-Agent
  ``gvfs/VERSION``).
- KIO: ``KDE/kio`` ``src/kioworkers/http/http.cpp``: ``davStatList`` (the 13-property PROPFIND,
  depth 0 for stat, 1 for listDir), ``makeDavRequest`` (``Content-Type: text/xml;
  charset=utf-8``), ``davParsePropstats`` (a propstat without a status ends the parse).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit
from xml.etree import ElementTree

import pytest

from tests.conftest import source_file
from tests.test_webdav import Share, first, start_serve, stop_serve, url_of

# -- what each client sends -------------------------------------------------------------------

#: webdavfs' User-Agent: "WebDAVFS/%s (%.8lx) %s%s/%s (%s)" (bundle version, its number, the kernel).
FINDER_UA = "WebDAVFS/3.0.0 (03008000) Darwin/22.6.0 (arm64)"
#: webdav_network.c, network_stat and network_readdir (cache off): the same four properties.
FINDER_STAT = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:">\n'
    b"<D:prop>\n"
    b"<D:getlastmodified/>\n"
    b"<D:getcontentlength/>\n"
    b"<D:creationdate/>\n"
    b"<D:resourcetype/>\n"
    b"</D:prop>\n"
    b"</D:propfind>\n"
)
#: webdav_network.c, network_statfs.
FINDER_QUOTA = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:">\n'
    b"<D:prop>\n"
    b"<D:quota-available-bytes/>\n"
    b"<D:quota-used-bytes/>\n"
    b"<D:quota/>\n"
    b"<D:quotaused/>\n"
    b"</D:prop>\n"
    b"</D:propfind>\n"
)
#: What a new Finder mount asks for, each with network_stat's PROPFIND (sabre/dav's Finder page:
#: mach_kernel ... .DS_Store), what macOS looks for on any volume it mounts (.localized, .hidden,
#: .Trashes, ...), and an AppleDouble ``._<name>``.
FINDER_PROBES = (
    "mach_kernel", ".Spotlight-V100", "._.", "Backups.backupdb", ".metadata_never_index", "Contents",
    ".DS_Store", ".localized", ".hidden", ".metadata_never_index_unless_rootfs", ".ql_disablethumbnails",
    ".TemporaryItems", ".Trashes", "._x",
)  # fmt: skip

WINDOWS_UA = "Microsoft-WebDAV-MiniRedir/10.0.19045"
#: What Explorer looks for in every folder it opens.
WINDOWS_PROBES = ("desktop.ini", "Desktop.ini", "AutoRun.inf", "autorun.inf", "folder.jpg", "Thumbs.db")

GVFS_UA = "gvfs/1.50.4"
#: gvfsbackenddav.c: PROPSTAT_XML_BEGIN, stat_location_start's two properties, PROPSTAT_XML_END.
GVFS_STAT = (
    b'<?xml version="1.0" encoding="utf-8" ?>\n'
    b' <D:propfind xmlns:D="DAV:">\n'
    b"  <D:prop>\n"
    b"<D:resourcetype/>\n"
    b"<D:getcontentlength/>\n"
    b"  </D:prop>\n"
    b" </D:propfind>"
)
#: propfind_request_new with ls_propnames (query_info at depth 0, enumerate at depth 1).
GVFS_LS = (
    b'<?xml version="1.0" encoding="utf-8" ?>\n'
    b' <D:propfind xmlns:D="DAV:">\n'
    b"  <D:prop>\n"
    + b"".join(
        b"<D:%s/>\n" % name
        for name in (
            b"creationdate",
            b"displayname",
            b"getcontentlength",
            b"getcontenttype",
            b"getetag",
            b"getlastmodified",
            b"resourcetype",
        )
    )
    + b"  </D:prop>\n"
    b" </D:propfind>"
)
#: libsoup's own headers (its content decoder asks for compression).
GVFS = [("User-Agent", GVFS_UA), ("Accept-Encoding", "gzip, deflate")]

KIO_UA = "Mozilla/5.0 (X11; Linux x86_64) KIO/5.116 KHTML/5.116.0 (like Gecko) Konqueror/5.116"
#: http.cpp, davStatList: one line, 13 properties.
KIO_STAT = (
    b'<?xml version="1.0" encoding="utf-8" ?>'
    b'<D:propfind xmlns:D="DAV:">'
    b"<D:prop>"
    b"<D:creationdate/>"
    b"<D:getcontentlength/>"
    b"<D:displayname/>"
    b"<D:source/>"
    b"<D:getcontentlanguage/>"
    b"<D:getcontenttype/>"
    b"<D:getlastmodified/>"
    b"<D:getetag/>"
    b"<D:supportedlock/>"
    b"<D:lockdiscovery/>"
    b"<D:resourcetype/>"
    b"<D:quota-available-bytes/>"
    b"<D:quota-used-bytes/>"
    b"</D:prop>"
    b"</D:propfind>"
)
#: Qt's network stack adds these to every request KIO makes.
KIO = [("User-Agent", KIO_UA), ("Accept-Encoding", "gzip, deflate"), ("Accept-Language", "en-US,*"),
       ("Connection", "Keep-Alive")]  # fmt: skip


# -- a client's connection --------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    kept: bool  # the connection stays open for the next request

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


class Client:
    """One kept-alive connection sending requests exactly as given: the request line, then the
    headers in their order (Host first, as clients send it; Content-Length for a body), then
    the body, if ``late``, only after that many seconds. Counts the connections it opened."""

    def __init__(self, share: Share, headers: list[tuple[str, str]]) -> None:
        self.port = share.port
        self.common = headers
        self.connections = 0
        client = self

        class Counted(http.client.HTTPConnection):
            def connect(self) -> None:
                client.connections += 1
                super().connect()

        self.http = Counted("127.0.0.1", share.port, timeout=30)

    def send(
        self, method: str, path: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"", late: float = 0
    ) -> Answer:  # fmt: skip
        connection = self.http
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", f"127.0.0.1:{self.port}")
        for name, value in [*self.common, *headers]:
            connection.putheader(name, value)
        if body and not any(name.lower() == "content-length" for name, _ in headers):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        if body:
            if late:
                time.sleep(late)
            connection.send(body)
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, response.headers, data, not response.will_close)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def share(generated, s3_proxy, tmp_path_factory) -> Iterator[Share]:
    collections = sorted({s.collection_id for s in generated})
    served = start_serve(
        tmp_path_factory.mktemp("serve-clients"), s3_proxy.url, *(f"--collection={c}" for c in collections)
    )
    yield served
    stop_serve(served)


# -- reading answers as the clients read them ---------------------------------------------------


def responses(body: bytes) -> list[tuple[str, dict[str, tuple[int, ElementTree.Element]]]]:
    """A multistatus as (href, property -> (status, element)), in order; every propstat must
    carry a status line (KIO stops reading a response at a propstat without one)."""
    found = []
    for response in ElementTree.fromstring(body).findall("{DAV:}response"):
        props: dict[str, tuple[int, ElementTree.Element]] = {}
        for propstat in response.findall("{DAV:}propstat"):
            status = propstat.findtext("{DAV:}status")
            assert status and status.startswith("HTTP/1.1 "), ElementTree.tostring(propstat)
            for prop in propstat.find("{DAV:}prop") or []:
                props[prop.tag] = (int(status.split(" ")[1]), prop)
        found.append((response.findtext("{DAV:}href") or "", props))
    return found


def finder_members(asked: str, body: bytes) -> list[str]:
    """What webdavfs's readdir lists of a depth-1 answer (webdav_parse.c, GetComponentName): an
    href whose percent-decoded path is longer than the asked URL's is a member, named by its last
    segment; any other is the folder itself."""
    own = len(unquote(asked))
    names = []
    for href, _ in responses(body):
        path = unquote(urlsplit(urljoin("http://127.0.0.1/", href)).path)
        if len(path) > own:
            names.append(path.rstrip("/").rsplit("/", 1)[-1])
    return names


def is_collection(props: dict[str, tuple[int, ElementTree.Element]]) -> bool:
    status, element = props["{DAV:}resourcetype"]
    return status == 200 and element.find("{DAV:}collection") is not None


def ancestors(path: str) -> list[str]:
    """``a/b/c`` -> ``["/", "/a/", "/a/b/", "/a/b/c/"]`` (URL paths, quoted)."""
    parts = path.split("/")
    return ["/"] + [url_of("/".join(parts[: k + 1])) + "/" for k in range(len(parts))]


# -- Finder -----------------------------------------------------------------------------------


FINDER = [("User-Agent", FINDER_UA), ("Accept", "*/*")]
FINDER_PROPFIND = [("Content-Type", "text/xml")]


def test_finder_mounts_read_only_and_its_probes_are_404_on_a_kept_connection(share, generated):
    """network_mount: OPTIONS then the 4-property stat of the mount URL (with its slash); the
    quota PROPFIND; then the probes, each a depth-0 PROPFIND with a body, each a plain 404 (Finder
    turns anything else into an error), none costing the connection."""
    series = first(generated)
    finder = Client(share, FINDER)
    try:
        options = finder.send("OPTIONS", "/")
        assert options.status == 200 and options.kept
        # ParseDAVLevel: the DAV tokens' highest class; 1 mounts read-only (no LOCK), 0 refuses.
        assert [t.strip() for t in options.header("DAV").split(",")] == ["1"]
        mount = finder.send("PROPFIND", "/", [*FINDER_PROPFIND, ("Depth", "0")], FINDER_STAT)
        assert mount.status == 207 and mount.kept
        [(href, props)] = responses(mount.body)
        assert href == "/" and is_collection(props) and props["{DAV:}getlastmodified"][0] == 200
        quota = finder.send("PROPFIND", "/", [*FINDER_PROPFIND, ("Depth", "0")], FINDER_QUOTA)
        assert quota.status == 207 and quota.kept
        [(_, props)] = responses(quota.body)  # parse_statfs: the IETF quota is the volume's size
        assert {tag.split("}")[1] for tag in props} == {"quota-available-bytes", "quota-used-bytes", "quota",
                                                        "quotaused"}  # fmt: skip
        available, used = props["{DAV:}quota-available-bytes"], props["{DAV:}quota-used-bytes"]
        assert (available[0], available[1].text) == (200, "0")  # read-only
        assert used[0] == 200 and int(used[1].text or 0) > 0  # the selection's size
        for folder in ("/", url_of(series.path) + "/", url_of(series.path.rsplit("/", 1)[0]) + "/"):
            for name in (*FINDER_PROBES, f"._{series.files[0].name}"):
                probe = finder.send("PROPFIND", folder + name, [*FINDER_PROPFIND, ("Depth", "0")], FINDER_STAT)
                assert (probe.status, probe.kept) == (404, True), (folder + name, probe.status, probe.headers)
        assert finder.connections == 1
    finally:
        finder.close()


@pytest.mark.parametrize("depth", ["0", "1"])
def test_finder_lists_each_folder_with_and_without_its_slash_and_never_inside_itself(share, generated, depth):
    """network_readdir (depth 1) and network_stat (depth 0) of the root, a collection, a study and
    a series folder, asked with and without the trailing slash: depth 0 is the folder alone, a
    collection; depth 1 gives the same members either way, and never the folder itself as one
    (before: asked without its slash, a folder's own href, with its slash, was the longer path,
    and webdavfs listed the folder inside itself)."""
    series = first(generated)
    finder = Client(share, FINDER)
    try:
        for folder in ancestors(series.path):
            listed = {}
            for asked in {folder, folder.rstrip("/") or "/"}:
                answer = finder.send("PROPFIND", asked, [*FINDER_PROPFIND, ("Depth", depth)], FINDER_STAT)
                assert answer.status == 207 and answer.kept, (asked, answer.status)
                found = responses(answer.body)
                assert is_collection(found[0][1]) and found[0][0].rstrip("/") == asked.rstrip("/")
                listed[asked] = finder_members(asked, answer.body)
                assert len(listed[asked]) == len(found) - 1
                own = unquote(folder.rstrip("/")).rsplit("/", 1)[-1]
                assert own == "" or own not in listed[asked], (asked, "listed inside itself")
            members = list(listed.values())
            assert members[0] == members[-1]
            if depth == "1":
                assert members[0]
        if depth == "1":
            files = finder_members(url_of(series.path), finder.send(
                "PROPFIND", url_of(series.path), [*FINDER_PROPFIND, ("Depth", "1")], FINDER_STAT).body)  # fmt: skip
            assert sorted(files) == sorted(f.name for f in series.files)
        assert finder.connections == 1
    finally:
        finder.close()


def test_finder_reads_ranges_exactly_and_revalidates_with_if_modified_since_and_if_range(share, generated):
    """network_read's ``Range: bytes=a-b`` (a 2xx body longer than the range is cut to it, so only
    206 with the exact bytes is right; the last block runs past the end), network_get's
    ``If-Modified-Since`` (304 for an unchanged file: before, 200 and the whole file again, as
    wsgidav answers 304 only for a date after the file's), its resume (``Range: bytes=N-`` with
    ``If-Range`` the date it has: 206 if it matches, 200 whole if not), and If-None-Match."""
    series = first(generated)
    name = series.files[0].name
    expected = source_file(series, name).read_bytes()
    size = len(expected)
    path = url_of(f"{series.path}/{name}")
    finder = Client(share, FINDER)
    try:
        whole = finder.send("GET", path)
        assert whole.status == 200 and whole.body == expected and int(whole.header("Content-Length")) == size
        modified, etag = whole.header("Last-Modified"), whole.header("ETag")
        assert modified and etag
        for offset, count in ((0, 4096), (128, 4), (65536, 65536), (size - 100, 65536), (size - 1, 1)):
            ranged = finder.send("GET", path, [("Range", f"bytes={offset}-{offset + count - 1}")])
            end = min(offset + count, size)
            assert ranged.status == 206 and ranged.body == expected[offset:end], (offset, count, ranged.status)
            assert ranged.header("Content-Range") == f"bytes {offset}-{end - 1}/{size}"
            assert int(ranged.header("Content-Length")) == end - offset
        assert finder.send("GET", path, [("Range", f"bytes={size}-{size + 10}")]).status == 416

        unchanged = finder.send("GET", path, [("If-Modified-Since", modified)])
        assert (unchanged.status, unchanged.body, unchanged.kept) == (304, b"", True)
        assert unchanged.header("ETag") == etag and unchanged.header("Last-Modified") == modified
        head = finder.send("HEAD", path, [("If-Modified-Since", modified)])
        assert (head.status, head.body) == (304, b"")
        earlier = formatdate(parsedate_to_datetime(modified).timestamp() - 1, usegmt=True)
        changed = finder.send("GET", path, [("If-Modified-Since", earlier)])
        assert changed.status == 200 and changed.body == expected
        assert finder.send("GET", path, [("If-Modified-Since", "not a date")]).body == expected

        resumed = finder.send("GET", path, [("If-Range", modified), ("Range", "bytes=1000-")])
        assert resumed.status == 206 and resumed.body == expected[1000:]
        assert resumed.header("Content-Range") == f"bytes 1000-{size - 1}/{size}"
        stale = finder.send("GET", path, [("If-Range", earlier), ("Range", "bytes=1000-")])
        assert stale.status == 200 and stale.body == expected and not stale.header("Content-Range")
        by_etag = finder.send("GET", path, [("If-Range", etag), ("Range", "bytes=1000-")])
        assert by_etag.status == 206 and by_etag.body == expected[1000:]

        assert finder.send("GET", path, [("If-None-Match", etag)]).status == 304
        other = finder.send("GET", path, [("If-None-Match", '"another"'), ("If-Modified-Since", modified)])
        assert other.status == 200 and other.body == expected  # a failed If-None-Match overrides the date
        assert finder.connections == 1
    finally:
        finder.close()


def test_last_modified_and_etag_are_the_same_across_requests_and_restarts(share, generated, s3_proxy, tmp_path):
    """Finder keeps a file's Last-Modified and revalidates with it later, also after the share
    restarted: every time and validator of the tree is fixed by the release, not by the process."""

    def validators(served: Share) -> list[tuple[str, ...]]:
        series = first(generated)
        client = Client(served, FINDER)
        try:
            seen: list[tuple[str, ...]] = []
            for f in series.files[:2]:
                answer = client.send("HEAD", url_of(f"{series.path}/{f.name}"))
                seen.append((answer.header("Last-Modified"), answer.header("ETag")))
            for folder in ancestors(series.path):
                listing = client.send("PROPFIND", folder, [*FINDER_PROPFIND, ("Depth", "1")], FINDER_STAT)
                for href, props in responses(listing.body):
                    seen.append((href, props["{DAV:}getlastmodified"][1].text or ""))
            return seen
        finally:
            client.close()

    before = validators(share)
    assert before == validators(share)
    collections = sorted({s.collection_id for s in generated})
    again = start_serve(tmp_path, s3_proxy.url, *(f"--collection={c}" for c in collections))
    try:
        assert validators(again) == before
    finally:
        stop_serve(again)


# -- Windows ----------------------------------------------------------------------------------


WINDOWS = [("User-Agent", WINDOWS_UA), ("translate", "f"), ("Connection", "Keep-Alive")]


def test_windows_options_allprop_without_slash_probes_and_get(share, generated):
    """The Mini-Redirector: ``OPTIONS /`` (class 1, MS-Author-Via: DAV, PROPFIND allowed: it
    treats a server without them as no WebDAV server), an allprop PROPFIND with
    ``Content-Length: 0`` of each folder URL without its slash (207, never a 301, which it shows
    as an empty folder), the folder first; its probes a plain 404; files with Content-Length."""
    series = first(generated)
    windows = Client(share, WINDOWS)
    try:
        options = windows.send("OPTIONS", "/", [("Content-Length", "0")])
        assert options.status == 200 and options.header("MS-Author-Via") == "DAV"
        assert "1" in [t.strip() for t in options.header("DAV").split(",")]
        assert "PROPFIND" in [m.strip() for m in options.header("Allow").split(",")]
        for folder in ancestors(series.path)[1:]:
            asked = folder.rstrip("/")
            for depth in ("0", "1"):
                answer = windows.send("PROPFIND", asked, [("Depth", depth), ("Content-Length", "0")])
                assert answer.status == 207 and answer.kept, (asked, depth, answer.status)
                found = responses(answer.body)
                assert found[0][0].rstrip("/") == asked and is_collection(found[0][1])
                assert len(found) == 1 if depth == "0" else len(found) > 1
            for name in WINDOWS_PROBES:
                for method, extra in (("PROPFIND", [("Depth", "0"), ("Content-Length", "0")]), ("GET", [])):
                    probe = windows.send(method, f"{asked}/{name}", extra)
                    assert (probe.status, probe.kept) == (404, True), (method, name, probe.status)
        for f in series.files:
            got = windows.send("GET", url_of(f"{series.path}/{f.name}"))
            assert got.status == 200 and got.body == source_file(series, f.name).read_bytes()
            assert int(got.header("Content-Length")) == f.size
        assert windows.connections == 1
    finally:
        windows.close()


# -- gvfs -------------------------------------------------------------------------------------


def test_gvfs_mounts_a_series_folder_walking_up_to_the_root(share, generated):
    """try_mount: OPTIONS of the mount URL (as typed, without a slash) and a depth-1 PROPFIND of
    stat_location_start's body; then the same for each parent (with its slash) up to ``/``: every
    OPTIONS says DAV, every PROPFIND finds its target (path_equal, relaxed: the slash ignored), a
    collection. Then query_info (depth 0) and enumerate (depth 1) with ls_propnames."""
    series = first(generated)
    gvfs = Client(share, GVFS)
    try:
        walked = [url_of(series.path), *reversed(ancestors(series.path)[:-1])]
        for folder in walked:
            options = gvfs.send("OPTIONS", folder)
            assert options.status == 200 and options.header("DAV"), folder
            stat = gvfs.send("PROPFIND", folder, [("Depth", "1"), ("Content-Type", "application/xml")], GVFS_STAT)
            assert stat.status == 207 and stat.kept, (folder, stat.status)
            targets = [props for href, props in responses(stat.body) if href.rstrip("/") == folder.rstrip("/")]
            assert len(targets) == 1 and is_collection(targets[0]), folder
        base = url_of(series.path) + "/"
        info = gvfs.send("PROPFIND", base, [("Depth", "0"), ("Content-Type", "application/xml")], GVFS_LS)
        [(_, props)] = responses(info.body)
        assert info.status == 207 and is_collection(props)
        listing = gvfs.send("PROPFIND", base, [("Depth", "1"), ("Content-Type", "application/xml")], GVFS_LS)
        files = {href.rsplit("/", 1)[1]: props for href, props in responses(listing.body)[1:]}
        assert sorted(files) == sorted(f.name for f in series.files)
        for f in series.files:
            assert files[f.name]["{DAV:}getcontentlength"][1].text == str(f.size)
            assert files[f.name]["{DAV:}getetag"][0] == 200
        assert gvfs.connections == 1
    finally:
        gvfs.close()


# -- KIO --------------------------------------------------------------------------------------


def test_kio_stat_and_list_with_its_13_properties_every_propstat_with_a_status(share, generated):
    """davStatList: stat (depth 0) of a folder and a file, listDir (depth 1) of a folder, each
    with the 13 properties; read as davParsePropstats reads them (the first response for a stat;
    resourcetype for a folder, getcontentlength for a size), every propstat with its status."""
    series = first(generated)
    kio = Client(share, KIO)
    headers = [("Content-Type", "text/xml; charset=utf-8")]
    try:
        for folder in (url_of(series.path), url_of(series.path) + "/", "/"):
            stat = kio.send("PROPFIND", folder, [*headers, ("Depth", "0")], KIO_STAT)
            assert stat.status == 207 and stat.kept
            [(href, props)] = responses(stat.body)
            assert href.rstrip("/") == folder.rstrip("/") and is_collection(props)
            assert props["{DAV:}getlastmodified"][0] == 200 and props["{DAV:}source"][0] == 404
        f = series.files[0]
        stat = kio.send("PROPFIND", url_of(f"{series.path}/{f.name}"), [*headers, ("Depth", "0")], KIO_STAT)
        [(_, props)] = responses(stat.body)
        assert not is_collection(props) and props["{DAV:}getcontentlength"][0] == 200
        assert props["{DAV:}getcontentlength"][1].text == str(f.size)
        assert props["{DAV:}getcontenttype"][1].text == "application/dicom"
        listing = kio.send("PROPFIND", url_of(series.path) + "/", [*headers, ("Depth", "1")], KIO_STAT)
        found = responses(listing.body)
        assert listing.status == 207 and len(found) == len(series.files) + 1
        assert kio.connections == 1
    finally:
        kio.close()


# -- a body the server never reads ------------------------------------------------------------


def test_a_body_arriving_after_its_answer_is_due_never_costs_the_answer_or_the_connection(share, generated):
    """8 clients x 50 requests on kept-alive connections, each request's body sent only after a
    pause (so the server may have its answer before the body is in): Finder's probe of a missing
    ``._<name>`` (404 without reading the body), its stat of a folder (207, the body read), and
    a GET. Every answer whole and right; each client's connection kept throughout. Before: for
    the 404, wsgidav read the unread body with the socket made non-blocking (it took wsgi.input
    for a socket's file), the read raised with the body not yet in and left the socket so;
    cheroot's own drain in send_headers then read None, raised (``TypeError: object of type
    'NoneType' has no len()``) and closed the connection: no answer."""
    series = first(generated)
    name = series.files[0].name
    expected = source_file(series, name).read_bytes()
    folder = url_of(series.path) + "/"
    failures: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> int:
        finder = Client(share, FINDER)
        try:
            for i in range(50):
                kind = i % 3
                try:
                    if kind == 0:
                        answer = finder.send("PROPFIND", f"{folder}._{k}-{i}-{name}",
                                             [*FINDER_PROPFIND, ("Depth", "0")], FINDER_STAT, late=0.005)  # fmt: skip
                        right = answer.status == 404
                    elif kind == 1:
                        answer = finder.send("PROPFIND", folder, [*FINDER_PROPFIND, ("Depth", "0")], FINDER_STAT,
                                             late=0.005)  # fmt: skip
                        right = answer.status == 207 and is_collection(responses(answer.body)[0][1])
                    else:
                        answer = finder.send("GET", url_of(f"{series.path}/{name}"), [("Range", "bytes=0-99")])
                        right = answer.status == 206 and answer.body == expected[:100]
                    if not (right and answer.kept):
                        raise AssertionError(f"{answer.status} kept={answer.kept}")
                except Exception as error:  # noqa: BLE001 - every failure of every client is reported
                    with lock:
                        failures.append(f"client {k} request {i}: {error!r}")
            return finder.connections
        finally:
            finder.close()

    with ThreadPoolExecutor(8) as pool:
        connections = list(pool.map(client, range(8)))
    assert not failures, failures[:5]
    assert connections == [1] * 8  # each client's 50 requests on its one connection


def test_a_body_too_long_or_chunked_to_drain_closes_the_connection_after_a_whole_answer(share, generated):
    """A body the server will not read (a refused PUT's, a PROPFIND's for a missing name that is
    longer than the server drains, or sent chunked) gets its whole answer with
    ``Connection: close``, and the client's next request a new connection that works."""
    series = first(generated)
    folder = url_of(series.path) + "/"
    finder = Client(share, FINDER)
    try:
        big = FINDER_STAT + b" " * (128 << 10)
        answer = finder.send("PROPFIND", f"{folder}._big", [*FINDER_PROPFIND, ("Depth", "0")], big, late=0.005)
        assert answer.status == 404 and not answer.kept and answer.header("Connection").lower() == "close"
        finder.http.putrequest("PUT", f"{folder}new.dcm", skip_host=True, skip_accept_encoding=True)
        finder.http.putheader("Host", f"127.0.0.1:{share.port}")
        finder.http.putheader("User-Agent", FINDER_UA)
        finder.http.putheader("Transfer-Encoding", "chunked")
        finder.http.endheaders()
        finder.http.send(b"10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n")
        put = finder.http.getresponse()
        put.read()
        assert put.status in (403, 405) and put.will_close
        again = finder.send("PROPFIND", folder, [*FINDER_PROPFIND, ("Depth", "0")], FINDER_STAT)
        assert again.status == 207 and again.kept
        assert finder.connections == 3
    finally:
        finder.close()


def test_the_share_log_has_no_traceback(share):
    """Everything above was answered without an exception in the server."""
    log = Path(share.process.args[share.process.args.index("--cache-dir") + 1]).parent / "serve.out"
    assert "Traceback" not in log.read_text()
