"""The share under many clients at once: none is dropped at the door."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.conftest import source_file
from tests.test_webdav import first, start_serve, stop_serve, url_of

NETSTAT = Path("/proc/net/netstat")


def listen_drops() -> int:
    """The kernel's count of connections it dropped at a full listen queue (all sockets)."""
    lines = [line.split() for line in NETSTAT.read_text().splitlines() if line.startswith("TcpExt:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("ListenDrops")])


@pytest.mark.skipif(not NETSTAT.exists(), reason="needs Linux's /proc/net/netstat")
def test_64_clients_connecting_at_once_are_all_answered_and_none_dropped(generated, s3_proxy, tmp_path):
    series = first(generated)
    name = series.files[0].name
    expected = source_file(series, name).read_bytes()
    served = start_serve(tmp_path, s3_proxy.url, f"--collection={series.collection_id}")
    clients = 64
    ready = threading.Barrier(clients)
    answers: list[bytes] = []
    lock = threading.Lock()
    request = f"GET {url_of(f'{series.path}/{name}')} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    def client() -> None:
        ready.wait(30)  # all at once
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        with lock:
            answers.append(b"".join(chunks))

    try:
        served.request("GET", url_of(f"{series.path}/{name}"))  # warm: the door, not the store, is measured
        before = listen_drops()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        after = listen_drops()
    finally:
        stop_serve(served)
    assert len(answers) == clients
    assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(expected) for a in answers)
    assert after - before == 0, f"{after - before} connections dropped at the listen queue"
