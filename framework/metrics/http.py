"""The HTTP endpoint: /metrics (prometheus_client's WSGI app), /healthz and /readyz.

A small threading WSGI server of the standard library, in daemon threads, so neither a scrape nor
a slow client ever runs on the completion loop.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from framework.config import split_listen


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


def _plain(start_response: Callable[..., Any], status: str, text: str) -> Iterable[bytes]:
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


class MetricsHTTPServer:
    """Serves `metrics` (a framework.metrics.Metrics) on `listen` ("host:port") until close()."""

    def __init__(self, listen: str, metrics: Any) -> None:
        host, port = split_listen(listen)
        self._metrics = metrics
        self._prometheus = make_wsgi_app(metrics.registry)
        server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
        self._httpd = make_server(host, port, self._app, server_class, _QuietHandler)
        self.address: tuple[str, int] = (host, self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics-http", daemon=True
        )
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            ok, why = self._metrics.healthy()
            return _plain(start_response, "200 OK" if ok else "503 Service Unavailable", why)
        if path == "/readyz":
            ok, why = self._metrics.ready()
            return _plain(start_response, "200 OK" if ok else "503 Service Unavailable", why)
        if path in ("/metrics", "/"):
            body: Iterable[bytes] = self._prometheus(environ, start_response)
            return body
        return _plain(start_response, "404 Not Found", "try /metrics, /healthz or /readyz")

    def close(self) -> None:
        """Stop serving, close the listening socket and wait (up to 2 s) for the server thread."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2.0)
