"""``idcfs serve``: the tree as a read-only WebDAV share, through real clients (curl, rclone's
webdav backend, Python's http.client) against the local S3 server. No FUSE anywhere."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import IDCFS, PYTHON_AS_ON_WINDOWS, SERVE_AS_ON_WINDOWS, source_file, wait_until
from tests.testbed.dicomgen import GeneratedSeries
from tests.testbed.servers import free_port, rclone_binary


@dataclass
class Share:
    port: int
    process: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


def start_serve(tmp_path: Path, endpoint: str, *options: str) -> Share:
    port = free_port()
    log = open(tmp_path / "serve.out", "w")  # noqa: SIM115 - the process writes it while it runs
    process = subprocess.Popen(
        [IDCFS, "serve", "--listen", f"127.0.0.1:{port}", "--endpoint-url", endpoint,
         "--cache-dir", str(tmp_path / "cache"), "--block-size", "64K", *options],
        stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **PYTHON_AS_ON_WINDOWS} if os.environ.get(SERVE_AS_ON_WINDOWS) == "1" else None,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if "serving IDC read-only" in (tmp_path / "serve.out").read_text():
            return Share(port, process)
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"idcfs serve did not start: {(tmp_path / 'serve.out').read_text()}")


def stop_serve(share: Share) -> None:
    share.process.terminate()
    assert share.process.wait(20) == 0  # SIGTERM: a clean stop, in bounded time


@pytest.fixture(scope="module")
def share(generated, s3_proxy, tmp_path_factory) -> Iterator[Share]:
    collections = sorted({s.collection_id for s in generated})
    served = start_serve(tmp_path_factory.mktemp("serve"), s3_proxy.url, *(f"--collection={c}" for c in collections))
    yield served
    stop_serve(served)


def no_file_left_open(share: Share) -> bool:
    """Whether the share's count of open files comes back to none (answers closed theirs)."""
    from idcfs.service.report import read_stats

    return wait_until(lambda: read_stats(share.url)["open_files"] == 0, timeout=20)


def first(generated: list[GeneratedSeries]) -> GeneratedSeries:
    return next(s for s in generated if s.modality != "SM" and len(s.files) > 1)


def url_of(path: str) -> str:
    return "/" + quote(path)


def test_get_head_and_ranges_are_byte_exact(share, generated):
    series = first(generated)
    name = series.files[0].name
    expected = source_file(series, name).read_bytes()
    status, headers, body = share.request("GET", url_of(f"{series.path}/{name}"))
    assert status == 200 and body == expected and headers["Content-Type"] == "application/dicom"
    status, headers, body = share.request("HEAD", url_of(f"{series.path}/{name}"))
    assert status == 200 and int(headers["Content-Length"]) == len(expected) and body == b""
    ranged = subprocess.run(
        ["curl", "-sS", "-r", "128-131", "-o", "-", "-w", "%{http_code}", f"{share.url}{url_of(series.path)}/{name}"],
        capture_output=True,
        check=True,
    )
    assert ranged.stdout == expected[128:132] + b"206"  # DICM, and curl's status
    status, headers, _ = share.request("GET", url_of(f"{series.path}/{name}"), {"Range": f"bytes={len(expected)}-"})
    assert status == 416


def test_propfind_lists_a_series_with_exact_sizes_and_refuses_infinite_depth(share, generated):
    series = first(generated)
    status, _, body = share.request("PROPFIND", url_of(series.path) + "/", {"Depth": "1"})
    assert status == 207
    text = body.decode()
    for f in series.files:
        assert f.name in text and f"<ns0:getcontentlength>{f.size}</ns0:getcontentlength>" in text.replace("D:", "ns0:")
    status, _, body = share.request("PROPFIND", url_of(series.path) + "/", {"Depth": "infinity"})
    assert status == 403 and b"propfind-finite-depth" in body
    status, _, _ = share.request("PROPFIND", "/")  # no Depth header: infinity
    assert status == 403
    status, headers, _ = share.request("OPTIONS", "/")
    assert status == 200 and "1" in headers.get("DAV", "")


def test_a_browser_gets_an_html_listing(share, generated):
    series = first(generated)
    status, headers, body = share.request("GET", url_of(series.path) + "/", {"Accept": "text/html"})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert series.files[0].name.encode() in body


def test_every_write_is_refused_and_nothing_changes(share, generated):
    series = first(generated)
    target = url_of(f"{series.path}/{series.files[0].name}")
    for method, path, headers in (
        ("PUT", url_of(f"{series.path}/new.dcm"), {}),
        ("DELETE", target, {}),
        ("MKCOL", url_of(f"{series.path}/sub"), {}),
        ("MOVE", target, {"Destination": f"{share.url}{url_of(series.path)}/moved.dcm"}),
        ("COPY", target, {"Destination": f"{share.url}{url_of(series.path)}/copied.dcm"}),
        ("PROPPATCH", target, {"Content-Type": "application/xml"}),
        ("LOCK", target, {"Content-Type": "application/xml"}),
    ):
        status, _, _ = share.request(
            method, path, headers, body=b"x" if method in ("PUT", "PROPPATCH", "LOCK") else None
        )
        assert status in (403, 405), (method, status)
    status, _, body = share.request("GET", target)
    assert status == 200 and body == source_file(series, series.files[0].name).read_bytes()


@pytest.mark.parametrize(
    "path",
    ["/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/nlst/..%2f..%2fetc/passwd", "/a%00b",
     "/nlst\\..\\..\\etc\\passwd", "/" + "x" * 300, "http://example.com/etc/passwd"],
)  # fmt: skip
def test_path_traversal_and_odd_names_are_refused(share, path):
    connection = http.client.HTTPConnection("127.0.0.1", share.port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_host=False)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status in (400, 403, 404), (path, response.status)
    assert b"root:" not in body


def test_rclone_lists_and_copies_a_series_byte_exact(share, generated, tmp_path):
    series = first(generated)
    remote = f":webdav,url='{share.url}':{series.path}"
    listed = subprocess.run(
        [rclone_binary(), "lsf", remote, "--config", "/dev/null"], capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == sorted(f.name for f in series.files)
    copied = subprocess.run(
        [rclone_binary(), "copy", remote, str(tmp_path / "copy"), "--config", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert copied.returncode == 0, copied.stderr
    for f in series.files:
        assert (tmp_path / "copy" / f.name).read_bytes() == source_file(series, f.name).read_bytes()


def test_another_address_needs_auth_and_a_password_file_is_enforced(s3_proxy, generated, tmp_path):
    refused = subprocess.run(
        [IDCFS, "serve", "--listen", "0.0.0.0:0", "--endpoint-url", s3_proxy.url, "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "needs --auth" in refused.stderr
    users = tmp_path / "users.txt"
    users.write_text("# who may read\nreader:s3cret\n")
    series = first(generated)
    served = start_serve(tmp_path, s3_proxy.url, "--auth", str(users), f"--collection={series.collection_id}")
    try:
        status, headers, _ = served.request("GET", url_of(series.path) + "/")
        assert status == 401 and "WWW-Authenticate" in headers
        import base64

        token = base64.b64encode(b"reader:s3cret").decode()
        status, _, _ = served.request(
            "PROPFIND", url_of(series.path) + "/", {"Depth": "0", "Authorization": f"Basic {token}"}
        )
        assert status == 207
    finally:
        stop_serve(served)


# A read-only share: davfs2 must not try to LOCK what it opens. Linux 6.16 and later refuse
# davfs2's readdir (EINVAL) with its default 16 KiB buffer; 64 KiB is davfs2's own advice.
DAVFS_CONF = "use_locks 0\nbuf_size 64\n"


@pytest.fixture
def davfs2_cache() -> Iterator[Path]:
    """A cache folder for one davfs2 mount, removed after it.

    davfs2 keeps state outside a mount, named after its mount point: a PID file in
    /var/run/mount.davfs and a cache in /var/cache/davfs2 (named after the host too, not the
    port). pytest names a test's folders alike from run to run (pytest-0/... again once a passing
    run's are removed), so a mount on ``tmp_path / "dav"`` met what earlier runs left there: the
    PID file of a mount.davfs that did not end cleanly fails the mount ("found PID file"), and
    their cache, index and lost+found were taken over. So each mount has a mount point of a name
    no run had before (see the test) and this cache of its own."""
    cache = Path(tempfile.mkdtemp(prefix="idcfs-davfs2-"))
    cache.chmod(0o770)  # davfs2's daemon runs as its own user, of group davfs2
    shutil.chown(cache, group="davfs2")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


def dcm2niix(folder: Path, out: Path) -> dict[str, bytes]:
    """What dcm2niix makes of a folder, by file name (a fixed name: folders are named apart)."""
    out.mkdir()
    tool = shutil.which("dcm2niix", path=str(Path(sys.executable).parent)) or "dcm2niix"  # the PyPI wheel's
    subprocess.run([tool, "-f", "series", "-o", str(out), str(folder)], capture_output=True, check=True, timeout=120)
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("mount.davfs") is None or os.getuid() != 0, reason="needs davfs2, as root")
def test_davfs2_mounts_the_share_and_dcm2niix_converts_a_series_as_from_the_fuse_mount(
    share, generated, s3_mount, davfs2_cache, tmp_path
):
    """davfs2, as Linux desktops mount WebDAV: it lists a series, reads it byte-exact, and
    dcm2niix converts it to the same NIfTI as from the FUSE mount."""
    series = first(generated)
    conf = tmp_path / "davfs2.conf"
    conf.write_text(f"{DAVFS_CONF}cache_dir {davfs2_cache}\n")
    # A mount point of a name no earlier run mounted on, and short: davfs2 names its cache folder
    # after the URL and the mount point, and a name over 255 bytes cannot be made (the share's
    # root is mounted, not the series' long URL).
    point = Path(tempfile.mkdtemp(prefix="idcfs-dav-"))
    mounted = subprocess.run(
        ["mount", "-t", "davfs", "-o", f"ro,conf={conf}", f"{share.url}/", str(point)],
        input="\n\n",  # no user name, no password
        capture_output=True,
        text=True,
        timeout=60,
    )
    if mounted.returncode != 0:
        point.rmdir()
    assert mounted.returncode == 0, mounted.stderr
    folder = point / series.path
    try:
        assert sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in series.files)
        for f in series.files:
            assert (folder / f.name).stat().st_size == f.size
            assert (folder / f.name).read_bytes() == source_file(series, f.name).read_bytes()
        through_dav = dcm2niix(folder, tmp_path / "from-dav")
        assert any(name.endswith(".nii") for name in through_dav)
        assert through_dav == dcm2niix(s3_mount.series_dir(series), tmp_path / "from-fuse")
    finally:
        subprocess.run(["umount", str(point)], capture_output=True, timeout=60, check=False)  # waits for mount.davfs
        with contextlib.suppress(OSError):
            point.rmdir()


@pytest.mark.skipif(shutil.which("litmus") is None, reason="needs litmus")
def test_litmus_checks_that_apply_to_a_read_only_server_pass(share, generated, tmp_path):
    """Every litmus suite starts by creating a collection (its ``begin``), which a read-only
    server refuses: only ``init`` (OPTIONS, the DAV class) applies; the rest of what litmus
    would read (PROPFIND depth 0 and 1, GET, HEAD, ranges) is tested above."""
    series = first(generated)
    run = subprocess.run(
        ["litmus", f"{share.url}{url_of(series.path)}/"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert "init.................. pass" in run.stdout
    assert "begin................. FAIL" in run.stdout and "405 Method Not Allowed" in run.stdout  # MKCOL refused


def test_idcfs_stats_reads_a_served_share(share, generated):
    series = first(generated)
    share.request("GET", url_of(f"{series.path}/{series.files[0].name}"))
    shown = subprocess.run([IDCFS, "stats", share.url], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "requests" in shown.stdout and "memory cache" in shown.stdout and share.url in shown.stdout
    raw = subprocess.run([IDCFS, "stats", share.url, "--json"], capture_output=True, text=True, timeout=60)
    assert '"bytes_fetched"' in raw.stdout
    gone = subprocess.run([IDCFS, "stats", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "cannot reach idcfs serve" in gone.stderr and "Traceback" not in gone.stderr


def test_serve_as_its_systemd_unit_runs_it(s3_proxy, generated, tmp_path):
    """The unit's way: options from a TOML file, the address from IDCFS_LISTEN, READY=1 over
    $NOTIFY_SOCKET once it listens, a clean exit on SIGTERM."""
    import socket

    series = first(generated)
    config = tmp_path / "serve-8080.toml"
    config.write_text(f'endpoint_url = "{s3_proxy.url}"\ncollection = ["{series.collection_id}"]\nblock_size = "64K"\n')
    port = free_port()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(120)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "CACHE_DIRECTORY": str(tmp_path / "cache"),
               "IDCFS_LISTEN": f"127.0.0.1:{port}"}  # fmt: skip
        process = subprocess.Popen(
            [IDCFS, "serve", "--config", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            assert "READY=1" in notify.recv(4096).decode()
            served = Share(port, process)
            status, _, body = served.request("GET", url_of(f"{series.path}/{series.files[0].name}"))
            assert status == 200 and body == source_file(series, series.files[0].name).read_bytes()
            assert (tmp_path / "cache" / "blocks").is_dir()  # systemd's CacheDirectory= is the default
        finally:
            process.terminate()
            assert process.wait(20) == 0


def test_concurrent_clients_of_different_series_get_every_byte_right(share, generated):
    """A small version of the bench's load row: 8 clients, each on its own series, a few rounds."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    series = [s for s in generated if s.files][:8]
    expected = {
        (s.path, f.name): hashlib.sha256(source_file(s, f.name).read_bytes()).digest() for s in series for f in s.files
    }

    def client(k: int) -> tuple[int, int]:
        own, wrong, read = series[k % len(series)], 0, 0
        for _ in range(3):
            for f in own.files:
                status, _, body = share.request("GET", url_of(f"{own.path}/{f.name}"))
                read += 1
                wrong += status != 200 or hashlib.sha256(body).digest() != expected[(own.path, f.name)]
        return read, wrong

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    assert sum(read for read, _ in results) > 0 and sum(wrong for _, wrong in results) == 0


def responses(body: bytes) -> dict[str, dict[str, tuple[str, str]]]:
    """A multistatus as href -> property -> (status, value): the value's text, or its children's
    tags for an element such as DAV:resourcetype."""
    from xml.etree import ElementTree

    found: dict[str, dict[str, tuple[str, str]]] = {}
    for response in ElementTree.fromstring(body).iter("{DAV:}response"):
        props = found.setdefault(response.findtext("{DAV:}href") or "", {})
        for propstat in response.iter("{DAV:}propstat"):
            status = (propstat.findtext("{DAV:}status") or "").split(" ")[1]
            for prop in propstat.find("{DAV:}prop") or []:
                props[prop.tag] = (status, prop.text or ",".join(child.tag for child in prop))
    return found


def test_propfind_depth_1_is_streamed_and_answers_what_wsgidav_would(share, generated):
    """Depth 1 is streamed (chunked); wsgidav's own answer (taken when a condition is sent) is
    the same, property for property, for a series and for a folder above the series."""
    series = first(generated)
    for folder in (series.path, series.path.rsplit("/", 2)[0]):
        status, headers, streamed = share.request("PROPFIND", url_of(folder) + "/", {"Depth": "1"})
        assert status == 207 and headers.get("Transfer-Encoding") == "chunked"
        status, headers, built = share.request(
            "PROPFIND", url_of(folder) + "/", {"Depth": "1", "If-None-Match": '"not-this"'}
        )
        assert status == 207 and "Content-Length" in headers  # wsgidav's whole answer
        assert responses(streamed) == responses(built) and len(responses(streamed)) > 1
    listed = responses(share.request("PROPFIND", url_of(series.path) + "/", {"Depth": "1"})[2])
    for f in series.files:
        props = listed[url_of(f"{series.path}/{f.name}")]
        assert props["{DAV:}getcontentlength"] == ("200", str(f.size))
        assert not any(name.startswith("{urn:idcfs:}") for name in props)  # allprop leaves them out


def test_propfind_of_a_1503_file_series_lists_every_file_once_with_its_size(many_objects, s3_proxy, tmp_path):
    """Many batches of the streamed answer, awkward names included (as the tree escapes them),
    each file once."""
    from urllib.parse import unquote

    from idcfs.catalog.layout import escape_name

    series = many_objects.series
    served = start_serve(tmp_path, s3_proxy.url, f"--collection={series.collection_id}")
    try:
        status, _, body = served.request("PROPFIND", url_of(series.path) + "/", {"Depth": "1"})
    finally:
        stop_serve(served)
    assert status == 207
    listed = responses(body)
    files = {unquote(href).rsplit("/", 1)[1]: props for href, props in listed.items() if not href.endswith("/")}
    shown = {escape_name(name): name for name in many_objects.names}
    assert sorted(files) == sorted(shown) and len(listed) == len(files) + 1
    assert all(props["{DAV:}getcontentlength"] == ("200", str(len(many_objects.payload(shown[name]))))
               for name, props in files.items())  # fmt: skip


def test_propfind_gives_the_idc_metadata_by_name_and_404_for_unknown_names(share, generated):
    series = first(generated)
    asked = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:I="urn:idcfs:"><D:prop>'
        b"<D:getcontentlength/><I:modality/><I:crdc_instance_uuid/><I:no_such_thing/></D:prop></D:propfind>"
    )
    status, _, body = share.request("PROPFIND", url_of(series.path) + "/", {"Depth": "1"}, asked)
    assert status == 207
    listed = responses(body)
    for f in series.files:
        props = listed[url_of(f"{series.path}/{f.name}")]
        assert props["{urn:idcfs:}modality"] == ("200", series.modality)
        assert props["{urn:idcfs:}crdc_instance_uuid"] == ("200", f.name.removesuffix(".dcm"))
        assert props["{urn:idcfs:}no_such_thing"][0] == "404"
    names = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'
    status, _, body = share.request("PROPFIND", url_of(f"{series.path}/{series.files[0].name}"), {"Depth": "0"}, names)
    assert status == 207 and "{urn:idcfs:}series_instance_uid" in next(iter(responses(body).values()))
    status, _, _ = share.request("PROPFIND", url_of(series.path) + "/", {"Depth": "1"}, b"<not-xml")
    assert status == 400


def test_a_client_timeout_that_is_no_number_of_seconds_is_a_clear_error():
    for flags, env in ((["--client-timeout", "0"], {}), (["--client-timeout", "inf"], {}),
                       ([], {"IDCFS_CLIENT_TIMEOUT": "soon"})):  # fmt: skip
        run = subprocess.run(
            [IDCFS, "serve", *flags], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
        )
        assert run.returncode != 0 and "client-timeout" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_a_slow_client_is_cut_off_and_others_are_served(s3_proxy, generated, tmp_path):
    """A client that sends its request a byte at a time (each inside the socket timeout), or its
    body so, is cut off once its wait passes --client-timeout; a normal client meanwhile and
    after gets its answer."""
    import socket

    series = first(generated)
    served = start_serve(tmp_path, s3_proxy.url, f"--collection={series.collection_id}", "--client-timeout", "2")
    try:

        def trickle(head: bytes, then: bytes) -> bool:
            """Send ``head``, then ``then`` a byte every 0.5 s; True once the server hangs up."""
            with socket.create_connection(("127.0.0.1", served.port), timeout=30) as client:
                client.sendall(head)
                for byte in then:
                    try:
                        client.sendall(bytes([byte]))
                        time.sleep(0.5)
                        client.setblocking(False)
                        try:
                            if client.recv(65536) == b"":
                                return True
                        except BlockingIOError:
                            pass
                        finally:
                            client.setblocking(True)
                    except (BrokenPipeError, ConnectionResetError):
                        return True
                return False

        assert trickle(b"GET / HTTP/1.1\r\n", b"X-Slow: " + b"x" * 100)
        body = b"<?xml version='1.0'?><D:propfind xmlns:D='DAV:'><D:allprop/></D:propfind>" * 2
        head = f"PROPFIND / HTTP/1.1\r\nHost: x\r\nDepth: 0\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        assert trickle(head, body)
        status, _, got = served.request("GET", url_of(f"{series.path}/{series.files[0].name}"))
        assert status == 200 and got == source_file(series, series.files[0].name).read_bytes()
    finally:
        stop_serve(served)
    assert "sent or took nothing" in (tmp_path / "serve.out").read_text()


@pytest.mark.integration
def test_serve_shares_its_cache_folder_with_a_mount_and_idc_fs(s3_proxy, generated, mount_factory, tmp_path):
    """One cache folder, three readers at once (the share, a mount, idc://): every byte right."""
    from concurrent.futures import ThreadPoolExecutor

    from idcfs.fsspec import IdcFileSystem

    series = [s for s in generated if s.modality != "SM" and s.files][:3]
    collections = sorted({s.collection_id for s in series})
    selection = [f"--collection={c}" for c in collections]
    served = start_serve(tmp_path, s3_proxy.url, *selection)
    mount = mount_factory(s3_proxy.url, *selection, "--cache-dir", str(tmp_path / "cache"))
    fs = IdcFileSystem(
        endpoint_url=s3_proxy.url, cache_dir=str(tmp_path / "cache"), collection=collections, block_size="64K",
        skip_instance_cache=True,
    )  # fmt: skip
    try:
        reads = [(s, f.name) for s in series for f in s.files]

        def through(k: int, item: tuple[GeneratedSeries, str]) -> bool:
            s, name = item
            if k % 3 == 0:
                got = served.request("GET", url_of(f"{s.path}/{name}"))[2]
            elif k % 3 == 1:
                got = (mount.series_dir(s) / name).read_bytes()
            else:
                got = fs.cat_file(f"{s.path}/{name}")
            return got == source_file(s, name).read_bytes()

        with ThreadPoolExecutor(6) as pool:
            assert all(pool.map(through, range(len(reads) * 3), reads * 3))
    finally:
        fs.vfs.close()
        stop_serve(served)
