"""The store against real servers: what is retried, decided on the real exceptions of urllib3,
ssl and the standard library (provoked on loopback, never synthesised), faults injected by the
proxy in front of rclone, S3 region redirects, paged listings with one deadline, and one HTTP
behaviour (CA bundle, CONNECT proxy, NO_PROXY) for LIST and GET on S3 and GCS."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest

from idcfs.remote.buckets import AWS_TO_GCS_BUCKET, bucket_for, object_url
from idcfs.remote.http import CA_BUNDLE_VARIABLES, Http, HttpStatusError, error_for
from idcfs.remote.retry import FATAL, NOT_FOUND, TRANSIENT, UNREACHABLE, RetryPolicy, StoreError, classify
from idcfs.remote.store import Store, open_store
from tests.testbed.proxy import ConnectProxy
from tests.testbed.servers import free_port, gcs_server, s3_server
from tests.testbed.tls import make_certificates

from .conftest import TESTDATA, source_file


def read_range(store: Store, aws_bucket: str, key: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of an object, as one ``get_blocks`` of one block."""
    return b"".join(store.get_blocks(aws_bucket, key, start, [end - start]))


def test_bucket_mapping():
    assert bucket_for("aws", "idc-open-data-two") == "idc-open-data-two"
    assert bucket_for("gcs", "idc-open-data") == "idc-open-data"
    assert bucket_for("gcs", "idc-open-data-two") == "idc-open-idc1"
    assert bucket_for("gcs", "idc-open-data-cr") == "idc-open-cr"
    assert set(AWS_TO_GCS_BUCKET) == {"idc-open-data", "idc-open-data-two", "idc-open-data-cr"}
    with pytest.raises(StoreError):
        bucket_for("gcs", "some-other-bucket")
    with pytest.raises(ValueError):
        bucket_for("azure", "idc-open-data")


def test_urls():
    assert object_url("aws", "idc-open-data-cr", "u/*") == "s3://idc-open-data-cr/u/*"
    assert object_url("gcs", "idc-open-data-cr", "u/i.dcm") == "gs://idc-open-cr/u/i.dcm"


# -- real failures, provoked on loopback --------------------------------------------------------


class _RawServer:
    """A TCP server on 127.0.0.1 that answers each connection with ``behave(socket)``."""

    def __init__(self, behave, tls: ssl.SSLContext | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._behave, self._tls = behave, tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._listener.getsockname()[1]}/b/k"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(connection,), daemon=True).start()

    def _one(self, connection: socket.socket) -> None:
        try:
            if self._tls is not None:
                connection = self._tls.wrap_socket(connection, server_side=True)
            connection.recv(65536)  # the request
            self._behave(connection)
        except OSError:
            pass
        finally:
            connection.close()

    def close(self) -> None:
        self._listener.close()


def _error_of(url: str, timeout: float = 2.0, http: Http | None = None) -> BaseException:
    try:
        response = (http or Http(environ={})).request("GET", url, timeout)
    except Exception as error:  # noqa: BLE001 - the error is the result
        return error
    if response.status >= 300:
        return error_for(response)
    raise AssertionError(f"{url} answered {response.status}")


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _status(status: int, extra: str = "") -> callable:
    return lambda sock: sock.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n{extra}\r\n".encode())


BEHAVIOURS = {
    "reset": (_reset, TRANSIENT),
    "closed without an answer": (lambda sock: None, TRANSIENT),
    "truncated body": (
        lambda sock: sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40),
        TRANSIENT,
    ),
    "bad status line": (lambda sock: sock.sendall(b"HTTX/9 nonsense\r\n\r\n"), TRANSIENT),
    "read timeout": (lambda sock: time.sleep(3), TRANSIENT),
    "503 SlowDown": (_status(503), TRANSIENT),
    "500": (_status(500), TRANSIENT),
    "429": (_status(429, "Retry-After: 2\r\n"), TRANSIENT),
    "408": (_status(408), TRANSIENT),
    "403": (_status(403), FATAL),
    "400": (_status(400), FATAL),
    "404": (_status(404), NOT_FOUND),
}


@pytest.mark.parametrize("name", list(BEHAVIOURS))
def test_failures_of_a_real_server_are_classified(name):
    behave, expected = BEHAVIOURS[name]
    server = _RawServer(behave)
    try:
        error = _error_of(server.url, timeout=1.0)
    finally:
        server.close()
    assert classify(error) == expected, f"{type(error).__name__}: {error}"
    if name == "429":
        assert isinstance(error, HttpStatusError) and error.retry_after == 2


def test_refused_and_dns_failures_mean_unreachable():
    assert classify(_error_of(f"http://127.0.0.1:{free_port()}/b/k")) == UNREACHABLE
    assert classify(_error_of("http://no-such-host.invalid/b/k")) == UNREACHABLE


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def _server_context(certificates) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates.cert, certificates.key)
    return context


def test_tls_eof_is_transient_and_an_unknown_ca_is_not(certificates, monkeypatch):
    # TLS established, then the peer vanishes mid-response without close_notify.
    def eof(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        raw = socket.socket(fileno=sock.detach())
        _reset(raw)
        raw.close()

    server = _RawServer(eof, tls=_server_context(certificates))
    try:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(certificates.ca))
        assert classify(_error_of(server.url, http=Http(environ={}))) == TRANSIENT
        monkeypatch.delenv("AWS_CA_BUNDLE")
        error = _error_of(server.url, http=Http(environ={}))  # the system store lacks the test CA
        assert classify(error) == FATAL, error
    finally:
        server.close()


# -- the store against rclone, behind a proxy that injects one fault per request ---------------


@pytest.fixture
def faulty(s3_proxy):
    yield s3_proxy
    s3_proxy.fault = None


def _once(kind, method="GET", match=""):
    """A fault rule that fires for the first matching request only."""
    fired = []

    def rule(request_method, path):
        if request_method == method and match in path and not fired:
            fired.append(path)
            return kind
        return None

    return rule


@pytest.mark.parametrize(
    "fault",
    [
        503,
        500,
        429,
        "reset",
        "truncate",
        "slow:20000",
        "badstatus",
        "drop",
        "stall:3",
        "retry-after:1",
        "redirect",
        "moved",
    ],
)
def test_a_get_survives_one_fault(faulty, generated, fault):
    series = generated[0]
    name = series.files[0].name
    expected = source_file(series, name).read_bytes()
    store = open_store("aws", faulty.url, RetryPolicy(deadline=30, attempt_timeout=1.5))
    faulty.fault = _once(fault, match=name)
    assert read_range(store, series.aws_bucket, f"{series.crdc_series_uuid}/{name}", 0, len(expected)) == expected
    follows = fault in ("redirect", "moved")  # a redirect is followed, not retried
    assert store.counters.snapshot()["retries"] == (0 if follows else 1)
    if fault in ("truncate", "slow:20000"):  # the retry asked only for the bytes still missing
        assert store.counters.snapshot()["bytes_fetched"] == len(expected)


@pytest.mark.parametrize("fault", [403, 400])
def test_client_errors_are_not_retried(faulty, generated, fault):
    series = generated[0]
    name = series.files[0].name
    store = open_store("aws", faulty.url, RetryPolicy(deadline=30))
    faulty.fault = _once(fault, match=name)
    faulty.log.clear()
    with pytest.raises(StoreError):
        read_range(store, series.aws_bucket, f"{series.crdc_series_uuid}/{name}", 0, 10)
    assert faulty.log.count("GET", name) == 1


def test_a_retry_after_beyond_the_deadline_fails_without_another_request(faulty, generated):
    series = generated[0]
    name = series.files[0].name
    store = open_store("aws", faulty.url, RetryPolicy(deadline=5))
    faulty.fault = _once("retry-after:60", match=name)
    faulty.log.clear()
    with pytest.raises(StoreError):
        read_range(store, series.aws_bucket, f"{series.crdc_series_uuid}/{name}", 0, 10)
    assert faulty.log.count("GET", name) == 1


# -- listings: pages, one deadline, resumed from the failed page --------------------------------


@pytest.mark.parametrize("source", ["aws", "gcs"])
def test_a_paged_listing_resumes_from_the_failed_page(request, many_objects, source):
    proxy = request.getfixturevalue("s3_proxy" if source == "aws" else "gcs_proxy")
    store = open_store(source, proxy.url, RetryPolicy(deadline=30, attempt_timeout=5))
    proxy.log.clear()
    token = "continuation-token" if source == "aws" else "pageToken"
    proxy.fault = _once("reset", match=token)  # page 2 fails once
    try:
        objects = store.list_series(many_objects.aws_bucket, many_objects.crdc_series_uuid)
    finally:
        proxy.fault = None
    assert [o.name for o in objects] == many_objects.names
    assert all(o.size == len(many_objects.payload(o.name)) for o in objects)
    pages = -(-len(many_objects.names) // 1000)
    lists = [p for m, p in proxy.log.requests if many_objects.crdc_series_uuid in p and "download" not in p]
    assert len(lists) == pages + 1  # page 2 twice, page 1 once: not started over
    assert sum(token not in p for p in lists) == 1
    if source == "gcs":
        assert all("fields=" in p for p in lists)


def test_a_listing_shares_one_deadline_across_its_pages(s3_proxy, many_objects):
    """Every page stalls longer than a request may take: the listing gives up at its deadline,
    not at (pages x deadline)."""
    store = open_store("aws", s3_proxy.url, RetryPolicy(deadline=2, attempt_timeout=0.5))
    s3_proxy.fault = lambda method, path: "stall:1" if many_objects.crdc_series_uuid in path else None
    s3_proxy.log.clear()
    try:
        with pytest.raises(StoreError, match="deadline 2s"):
            store.list_series(many_objects.aws_bucket, many_objects.crdc_series_uuid)
    finally:
        s3_proxy.fault = None
    assert s3_proxy.log.count("GET", many_objects.crdc_series_uuid) <= 6  # ~2 s of 0.5 s attempts


# -- one HTTP behaviour: CA bundle and proxies, for LIST and GET, on S3 and GCS -----------------


@pytest.fixture(scope="module")
def tls_servers(certificates, generated):
    """rclone and fake-gcs-server over TLS, with a certificate of the test CA."""
    data, logs = TESTDATA / "data", TESTDATA / "logs"
    with (
        s3_server(data / "s3", log_path=logs / "rclone-tls.log", tls=certificates) as s3,
        gcs_server(data / "gcs", log_path=logs / "fake-gcs-tls.log", tls=certificates) as gcs,
    ):
        yield {"aws": s3, "gcs": gcs}


@pytest.mark.parametrize("source", ["aws", "gcs"])
@pytest.mark.parametrize("ca_variable", ["AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_tls_with_a_private_ca_through_a_connect_proxy(monkeypatch, tls_servers, generated, source, ca_variable):
    server = tls_servers[source]
    series = generated[0]
    name = series.files[0].name
    expected = source_file(series, name).read_bytes()
    for variable in CA_BUNDLE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(ca_variable, str(server.tls.ca))
    with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        store = open_store(source, server.url, RetryPolicy(deadline=10))
        objects = store.list_series(series.aws_bucket, series.crdc_series_uuid)
        assert name in [o.name for o in objects]
        assert read_range(store, series.aws_bucket, f"{series.crdc_series_uuid}/{name}", 0, len(expected)) == expected
        port = server.url.rsplit(":", 1)[1]
        assert proxy.tunnels and all(t == f"127.0.0.1:{port}" for t in proxy.tunnels)

        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        tunnels = len(proxy.tunnels)
        direct = open_store(source, server.url, RetryPolicy(deadline=10))
        assert read_range(direct, series.aws_bucket, f"{series.crdc_series_uuid}/{name}", 0, 10) == expected[:10]
        assert direct.list_series(series.aws_bucket, series.crdc_series_uuid)
        assert len(proxy.tunnels) == tunnels  # NO_PROXY: straight to the server


@pytest.mark.parametrize("source", ["aws", "gcs"])
def test_without_the_ca_tls_fails_at_once_for_list_and_get(monkeypatch, tls_servers, generated, source):
    for variable in CA_BUNDLE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    server = tls_servers[source]
    series = generated[0]
    store = open_store(source, server.url, RetryPolicy(deadline=30))
    with pytest.raises(StoreError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        store.list_series(series.aws_bucket, series.crdc_series_uuid)
    with pytest.raises(StoreError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        read_range(store, series.aws_bucket, f"{series.crdc_series_uuid}/{series.files[0].name}", 0, 10)
    assert store.counters.snapshot()["retries"] == 0


def test_the_proxy_is_chosen_per_host():
    http = Http(environ={"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".googleapis.com,localhost:9000"})
    assert http.proxy_for("https://idc-open-data.s3.amazonaws.com/x") == "http://proxy:3128"
    assert http.proxy_for("https://storage.googleapis.com/x") is None
    assert http.proxy_for("http://localhost:9000/x") is None  # no HTTP_PROXY for http
    assert Http(environ={"ALL_PROXY": "http://p:1"}).proxy_for("http://localhost:9000/x") == "http://p:1"
    assert Http(environ={"https_proxy": "http://p:1", "no_proxy": "*"}).proxy_for("https://a/x") is None
