"""``--metrics-port``: the live statistics over HTTP on loopback, for Prometheus and scripts."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from idcfs.service.report import prometheus_text

log = logging.getLogger(__name__)


class MetricsServer:
    """``GET /metrics`` (Prometheus) and ``GET /stats`` (JSON) on 127.0.0.1 only."""

    def __init__(self, port: int, collect: Callable[[], dict[str, Any]]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] == "/metrics":
                    body, kind = prometheus_text(collect()).encode(), "text/plain; version=0.0.4"
                elif self.path.split("?")[0] == "/stats":
                    body, kind = (json.dumps(collect(), indent=1) + "\n").encode(), "application/json"
                else:
                    self.send_error(404, "try /metrics or /stats")
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no log line per scrape
                pass

        if not 0 < port < 65536:
            raise OSError(f"--metrics-port {port} is not a TCP port (1-65535)")
        try:
            self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as error:
            raise OSError(error.errno, f"cannot serve metrics on 127.0.0.1:{port}: {error.strerror}") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="idcfs-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics at http://127.0.0.1:%d/metrics", self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
