"""The live page's web server: ``/`` (the page), ``/events`` (server-sent events), ``/state``.

A :class:`Viewer` subscribes to the mask stream on a thread of its own
(:class:`~temseg.stream.Subscriber`, CURVE keys as for ``temseg subscribe``),
feeds a :class:`~temseg.view.state.ViewState`, and serves the page with
starlette on uvicorn. The page and its script are in this package: nothing
is fetched from elsewhere. Each change of the state is one ``message`` event
with the JSON of :meth:`~temseg.view.state.ViewState.snapshot`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from temseg.stream import Subscriber
from temseg.view.state import ViewState

logger = logging.getLogger("temseg.view")

POLL_S = 0.2  # how often an open event stream looks for a new state
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream


def page_html() -> str:
    return resources.files("temseg.view").joinpath("page.html").read_text(encoding="utf-8")


def make_app(state: ViewState) -> Any:
    """The starlette application serving ``state``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    html = page_html()

    async def page(_request: Request) -> HTMLResponse:
        # The state now is in the page, so it shows at once; the events bring the next ones.
        initial = json.dumps(state.snapshot()).replace("</", "<\\/")
        body = html.replace("__INITIAL_STATE__", initial)
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    async def snapshot(_request: Request) -> JSONResponse:
        return JSONResponse(state.snapshot())

    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            sent, idle = -1, 0.0
            while not await request.is_disconnected():
                if state.version != sent:
                    data = state.snapshot()
                    sent, idle = data["version"], 0.0
                    yield f"data: {json.dumps(data)}\n\n"
                elif idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(POLL_S)
                idle += POLL_S

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return Starlette(routes=[Route("/", page), Route("/state", snapshot), Route("/events", events)])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(64)
    return sock


class Viewer:
    """Subscribes to ``connect`` and serves the page on ``host:port`` (0: a free port).

    ``curve_keys`` (the server's public key file) and ``client_key`` (this
    client's secret key file) as for :class:`~temseg.stream.Subscriber`.
    :attr:`url` is the page's address. :meth:`start`, then :meth:`close`.
    """

    def __init__(
        self,
        connect: str,
        host: str = "127.0.0.1",
        port: int = 8557,
        *,
        topics: Sequence[str] = ("temseg.",),
        curve_keys: Path | None = None,
        client_key: Path | None = None,
    ) -> None:
        import uvicorn

        self.state = ViewState(connect)
        self._subscriber = Subscriber(
            connect, topics=topics, curve_keys=curve_keys, client_key=client_key, timeout_ms=200
        )
        self._stop = threading.Event()
        try:
            self._socket = _bind(host, port)
        except OSError:
            self._subscriber.close()
            raise
        bound_host, bound_port = self._socket.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}/"
        config = uvicorn.Config(
            make_app(self.state),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._threads = [
            threading.Thread(target=self._receive, name="temseg-view-subscriber", daemon=True),
            threading.Thread(
                target=self._server.run,
                kwargs={"sockets": [self._socket]},
                name="temseg-view-http",
                daemon=True,
            ),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _receive(self) -> None:
        sub = self._subscriber
        while not self._stop.is_set():
            message = sub.receive()
            if message is not None:
                try:
                    self.state.add(message, gaps=len(sub.gaps))
                except Exception:  # one odd message must not end the page
                    logger.exception("could not show message seq=%s", message.header.get("seq"))

    def close(self) -> None:
        self._stop.set()
        self._server.should_exit = True
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)
        self._subscriber.close()
        self._socket.close()

    def __enter__(self) -> Viewer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
