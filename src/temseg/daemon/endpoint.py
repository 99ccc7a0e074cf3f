"""The daemon's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

- ``/metrics``: the text exposition of the daemon's registry
  (:mod:`temseg.daemon.metrics`);
- ``/healthz``: 200 while the pipeline makes progress or is idle with
  nothing pending, 503 once a frame is stuck (the rule of
  :meth:`~temseg.daemon.service.Daemon.healthy`, which also gates the systemd
  watchdog ping);
- ``/readyz``: 200 once the model is loaded and the stream socket bound,
  until stopping begins; 503 before and after.

A plain WSGI application on a threading ``wsgiref`` server, on its own
thread; it binds the setting ``metrics`` (HOST:PORT, loopback by default).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger("temseg.daemon")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http %s", format % args)


def _ipv6_server(host: str) -> type[_Server]:
    if ":" not in host:
        return _Server
    import socket

    class _Server6(_Server):
        address_family = socket.AF_INET6

    return _Server6


class Endpoint:
    """Serves the three paths of the module docstring on ``host:port`` (0: a free port)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        self._registry = registry
        self._healthy = healthy
        self._ready = ready
        try:
            self._server = make_server(
                host, port, self._app, server_class=_ipv6_server(host), handler_class=_QuietHandler
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror}"
            ) from exc
        bound_host, bound_port = str(self._server.server_address[0]), self._server.server_port
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        #: The base URL, e.g. ``http://127.0.0.1:9557`` (the port chosen for port 0).
        self.url = f"http://{shown}:{bound_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="temseg-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body, status = generate_latest(self._registry), "200 OK"
            start_response(status, [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path in ("/healthz", "/readyz"):
            ok = self._healthy() if path == "/healthz" else self._ready()
            body = b"ok\n" if ok else b"unhealthy\n" if path == "/healthz" else b"not ready\n"
            status = "200 OK" if ok else "503 Service Unavailable"
        else:
            body, status = b"not found: /metrics, /healthz, /readyz\n", "404 Not Found"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body]
