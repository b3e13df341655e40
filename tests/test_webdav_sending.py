"""How the share answers a plain GET of a file (idcfs/webdav/fileget.py) and sends its bytes
(idcfs/webdav/sending.py, the server in idcfs/webdav/deadline.py): the same answer as wsgidav's,
byte for byte, whole over a kept-alive connection, pipelined requests and TLS; the sending helper
and the body on their own, in process."""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from idcfs.vfs.body import FileBody
from idcfs.vfs.files import BytesFile
from idcfs.webdav import sending
from idcfs.webdav.fileget import _one_range
from tests.conftest import source_file
from tests.test_webdav import first, no_file_left_open, share, start_serve, stop_serve, url_of  # noqa: F401 - share: a fixture

#: What differs between two answers to the same request.
_OF_THE_MOMENT = {"Date", "Connection", "Keep-Alive"}


def _headers(headers: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key not in _OF_THE_MOMENT}


@pytest.mark.parametrize("wanted", [None, "bytes=0-99", "bytes=70000-", "bytes=-5000", "bytes=100-99999999"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_plain_get_gets_wsgidavs_answer(share, generated, method, wanted):  # noqa: F811
    """Answered ahead of wsgidav, it is what wsgidav answers when a condition (one that holds)
    sends the request its way: status, headers and bytes."""
    series = first(generated)
    name = series.files[0].name
    path = url_of(f"{series.path}/{name}")
    expected = source_file(series, name).read_bytes()
    headers = {} if wanted is None else {"Range": wanted}
    lean = share.request(method, path, headers)
    wsgidav = share.request(method, path, {**headers, "If-None-Match": '"not-this"'})
    assert lean[0] == wsgidav[0] == (200 if wanted is None else 206)
    assert _headers(lean[1]) == _headers(wsgidav[1])
    assert lean[2] == wsgidav[2]
    if method == "GET":
        first_byte = 0 if wanted is None else int(lean[1]["Content-Range"].split()[1].split("-")[0])
        assert lean[2] == expected[first_byte : first_byte + len(lean[2])] and lean[2]


def test_what_the_lean_path_leaves_goes_to_wsgidav(share, generated):  # noqa: F811
    series = first(generated)
    name = series.files[0].name
    path = url_of(f"{series.path}/{name}")
    size = len(source_file(series, name).read_bytes())
    status, headers, _ = share.request("GET", path, {"Range": f"bytes={size}-"})
    assert status == 416  # past the end: wsgidav's answer, with its Content-Range
    status, _, body = share.request("GET", path, {"Range": "bytes=0-1,4-5"})
    assert status == 206 and len(body) == 2  # several ranges: wsgidav sends the first
    status, _, _ = share.request("GET", path, {"Depth": "1"})
    assert status == 400
    status, _, _ = share.request("GET", url_of(f"{series.path}/no-such.dcm"))
    assert status == 404
    status, headers, body = share.request("GET", url_of(series.path) + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and name.encode() in body


def test_requests_one_after_another_and_pipelined_on_one_connection(share, generated):  # noqa: F811
    """A connection kept alive carries GETs, HEADs, a streamed PROPFIND and a 404 in turn; and
    requests sent at once, before any answer, are each answered whole, in order."""
    series = first(generated)
    files = {f.name: source_file(series, f.name).read_bytes() for f in series.files}
    connection = http.client.HTTPConnection("127.0.0.1", share.port, timeout=30)
    try:
        for round_ in range(3):
            for name, expected in files.items():
                connection.request("GET", url_of(f"{series.path}/{name}"))
                response = connection.getresponse()
                assert response.status == 200 and response.read() == expected
                connection.request("HEAD", url_of(f"{series.path}/{name}"))
                response = connection.getresponse()
                assert response.status == 200 and response.read() == b""
            connection.request("PROPFIND", url_of(series.path) + "/", headers={"Depth": "1"})
            response = connection.getresponse()
            assert response.status == 207 and response.read().count(b"<D:response>") == len(files) + 1
            connection.request("GET", url_of(f"{series.path}/missing-{round_}.dcm"))
            response = connection.getresponse()
            assert response.status == 404
            response.read()
    finally:
        connection.close()

    names = list(files)[:3]
    raw = b"".join(f"GET {url_of(f'{series.path}/{name}')} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for name in names)
    with socket.create_connection(("127.0.0.1", share.port), timeout=30) as sock:
        sock.sendall(raw)
        stream = sock.makefile("rb")
        for name in names:
            response = http.client.HTTPResponse(_Given(stream))  # type: ignore[arg-type]  # a socket's stand-in
            response.begin()
            assert response.status == 200 and response.read() == files[name]


class _Given:
    """A socket whose file is one already open, never closed by an answer: http.client reads
    the answers one after another."""

    def __init__(self, stream: io.BufferedReader) -> None:
        self._stream = stream

    def makefile(self, *_: object) -> _Given:
        return self

    def readline(self, limit: int = -1) -> bytes:
        return self._stream.readline(limit)

    def read(self, size: int | None = -1) -> bytes:
        return self._stream.read(size)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        return self._stream.readinto(buffer)

    def close(self) -> None:
        pass


def test_a_share_over_tls_sends_files_whole(s3_proxy, generated, tmp_path):
    """TLS cannot gather a head and a body in one call: sent one after the other, still whole."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    series = first(generated)
    served = start_serve(
        tmp_path, s3_proxy.url, f"--collection={series.collection_id}", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        connection = http.client.HTTPSConnection("127.0.0.1", served.port, timeout=30, context=context)
        try:
            for f in series.files:
                connection.request("GET", url_of(f"{series.path}/{f.name}"))
                response = connection.getresponse()
                assert response.status == 200 and response.read() == source_file(series, f.name).read_bytes()
            connection.request("PROPFIND", url_of(series.path) + "/", headers={"Depth": "1"})
            response = connection.getresponse()
            assert response.status == 207 and response.read().count(b"<D:response>") == len(series.files) + 1
        finally:
            connection.close()
    finally:
        stop_serve(served)


@pytest.mark.parametrize("head", [b"", b"HTTP/1.1 200 OK\r\n\r\n"])
@pytest.mark.parametrize("size", [0, 100, sending.JOIN_LIMIT + 1, 3 << 20])
def test_send_delivers_the_head_and_the_chunk_whole(head, size):
    """Through a socket whose buffers are small, so the kernel takes a little at a time."""
    chunk = memoryview(bytes(range(256)) * (size // 256 + 1))[:size]
    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    left.settimeout(30)
    received = bytearray()

    def read() -> None:
        while data := right.recv(65536):
            received.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        sending.send(left, chunk, head)
    finally:
        left.shutdown(socket.SHUT_WR)
        reader.join(30)
        left.close()
        right.close()
    assert bytes(received) == head + bytes(chunk)


def test_a_body_is_views_only_for_a_server_that_takes_them(tmp_path: Path):
    data = bytes(range(256)) * 1000
    for views, kind in ((True, memoryview), (False, bytes)):
        body = FileBody(BytesFile(memoryview(data)), 1000, 200_000, 65536, views)
        pieces = list(body)
        body.close()
        assert all(type(piece) is kind for piece in pieces)
        assert b"".join(bytes(piece) for piece in pieces) == data[1000:201_000]
        assert all(len(piece) <= 65536 for piece in pieces) and len(pieces) == 4  # one block each


class _Counted(BytesFile):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        super().close()


def test_a_body_dropped_mid_answer_closes_its_file():
    """wsgidav's ErrorPrinter, which wraps the body, lets it go without calling close() when the
    client goes away mid-answer (cheroot closes the outer generator): the file is closed anyway."""
    from wsgidav.error_printer import ErrorPrinter

    opened = _Counted(b"x" * 300_000)
    body = FileBody(opened, 0, 300_000, 65536, False)

    def app(environ, start_response):
        start_response("200 OK", [])
        return body

    printer = ErrorPrinter(None, app, {})
    answer = printer(environ={}, start_response=lambda *args: None)
    assert len(next(answer)) == 65536
    answer.close()  # what the server does when the send fails
    del answer
    assert opened.closes >= 1


def test_an_answer_cut_by_its_client_leaves_no_file_open(s3_proxy, large_object, tmp_path):
    """A client that reads the first bytes of a large file and goes away: the share's count of
    open files returns to none (each left open held its reader's claims for good)."""
    series = large_object.series
    served = start_serve(tmp_path, s3_proxy.url, f"--collection={series.collection_id}")
    try:
        path = url_of(f"{series.path}/{large_object.name}")
        for _ in range(3):
            with socket.socket() as client:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                client.connect(("127.0.0.1", served.port))
                client.settimeout(30)
                client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert client.recv(1024).startswith(b"HTTP/1.1 200")
        assert no_file_left_open(served), "files of answers cut by their clients stay open"
    finally:
        stop_serve(served)


def test_a_body_that_ends_early_is_an_error_not_a_short_answer():
    body = FileBody(BytesFile(b"x" * 10), 0, 20, 65536, False)
    with pytest.raises(OSError, match="ended at 10"):
        list(body)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 10)),
        ("bytes=90-", 100, (90, 10)),
        ("bytes=-10", 100, (90, 10)),
        ("bytes=-1000", 100, (0, 100)),
        ("bytes=95-1000", 100, (95, 5)),
        ("bytes=100-", 100, None),
        ("bytes=5-4", 100, None),
        ("bytes=-0", 100, None),
        ("bytes=0-1,3-4", 100, None),
        ("items=0-1", 100, None),
        ("bytes=0-9", 0, None),
    ],
)
def test_one_range_takes_one_satisfiable_byte_range_only(header, size, expected):
    assert _one_range(header, size) == expected


def test_a_client_that_stops_reading_its_answers_is_cut_off(s3_proxy, generated, tmp_path):
    """A worker's connection is blocking (the clocks bound its waits, not a socket timeout): a
    client that asks for far more than the sockets' buffers hold and reads none of it is cut off
    at --client-timeout, others are served meanwhile, and the server still stops at once."""
    import time

    series = first(generated)
    served = start_serve(tmp_path, s3_proxy.url, f"--collection={series.collection_id}", "--client-timeout", "2")
    try:
        requests = b"".join(
            f"GET {url_of(f'{series.path}/{f.name}')} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for f in series.files
        )
        wanted = sum(f.size for f in series.files)
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", served.port))
            repeats = max(1, (64 << 20) // max(1, wanted))  # answers far beyond the buffers
            client.settimeout(30)
            client.sendall(requests * min(repeats, 200))
            time.sleep(0.5)  # the server is sending into full buffers
            name = series.files[0].name
            status, _, got = served.request("GET", url_of(f"{series.path}/{name}"))
            assert status == 200 and got == source_file(series, name).read_bytes()
            deadline = time.monotonic() + 20
            while "sent or took nothing" not in (tmp_path / "serve.out").read_text():
                assert time.monotonic() < deadline, "the client that stopped reading was never cut off"
                time.sleep(0.2)
    finally:
        stop_serve(served)  # within its bound, a worker blocked on that client or not


def test_what_cheroot_writes_itself_is_a_wait_on_the_client():
    """cheroot writes a chunked answer's last chunk and an error answer to the connection's writer
    after the application's turn, on a blocking socket: a client that takes nothing more is cut
    off by its clock there too, not waited on for ever."""
    import types

    from idcfs.webdav.deadline import ClientClocks, _Connection

    clocks = ClientClocks(0.5)
    clocks.start()
    left, right = socket.socketpair()
    try:
        server = types.SimpleNamespace(client_clocks=clocks, peercreds_enabled=False, peercreds_resolve_enabled=False)
        connection = _Connection(server, left)
        left.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:
                left.send(b"x" * 65536)  # the client reads nothing: its buffers fill
        left.setblocking(True)
        failed: list[BaseException] = []

        def last_chunk() -> None:
            try:
                connection.wfile.write(b"0\r\n\r\n" * 100_000)
            except OSError as error:
                failed.append(error)

        writer = threading.Thread(target=last_chunk, daemon=True)
        writer.start()
        writer.join(10)
        assert not writer.is_alive(), "a write cheroot makes itself waited on its client for ever"
        assert failed
    finally:
        clocks.stop()
        left.close()
        right.close()


def test_a_live_control_file_is_sent_as_it_was_rendered(share, generated):  # noqa: F811
    """``/.idcfs/stats`` is rendered at each open: its answer has that rendering's length, also
    while other requests change the figures between its lookup and its open (the length was the
    lookup's: a body cut short or run over, not JSON)."""
    import json
    import time

    series = first(generated)
    busy = threading.Event()

    def reader() -> None:
        while not busy.is_set():
            share.request("GET", url_of(f"{series.path}/{series.files[0].name}"))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 5
        answers = 0
        while time.monotonic() < deadline:
            status, headers, body = share.request("GET", "/.idcfs/stats")
            assert status == 200 and int(headers["Content-Length"]) == len(body)
            json.loads(body)
            answers += 1
    finally:
        busy.set()
        for thread in threads:
            thread.join(30)
    assert answers > 10
