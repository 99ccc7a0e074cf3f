"""The thread that owns the publishing socket: it sends, and it polices the peers.

libzmq stores every subscription prefix a peer sends in a table that it
updates on whichever thread next uses the socket, for as long as the peer
keeps sending; it caps neither the number of prefixes nor the number of
connections. A sending thread that shares the socket with a flood of
subscriptions is held inside libzmq while memory grows. So the socket lives
on a thread of its own, which takes messages from the publisher through an
in-process queue that never blocks the publisher, and:

- admits at most ``max_peers`` connections: one beyond is shut down at once,
  so the stream cannot take the descriptors that frames are read with;
- keeps at most :data:`MAX_TOPICS` distinct prefixes: past that, the
  connection that has sent the most bytes (the kernel's count; on a
  transport without one, every connection) is shut down, and libzmq frees
  its prefixes;
- reads at most :data:`PEER_QUEUE` messages of a peer at a time, so the
  socket's table is updated in short steps between sends.

A shut-down connection is an ordinary disconnect: a ZeroMQ subscriber
reconnects on its own.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

MAX_TOPICS = 1024
"""Distinct subscription prefixes kept at once; a subscriber needs one or two."""

PEER_QUEUE = 4
"""Messages of one peer taken into the socket at a time (its ``ZMQ_RCVHWM``)."""

STOP = b""
"""The one-part message that tells the outlet thread to finish; a published
message has two parts or more."""

_BATCH = 64  # messages forwarded, or notices taken, between two looks at the peers
_WARN_EVERY_S = 60.0
_TCP_INFO_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in Linux's struct tcp_info

logger = logging.getLogger(__name__)


class Outlet(threading.Thread):
    """Run ``xpub`` (bound, configured) on this thread; messages come on ``inbox``.

    ``inbox``: the receiving end of an in-process PAIR whose sender is the
    publisher. ``xpub`` and ``inbox`` belong to this thread once it starts;
    it closes both when it has sent everything before :data:`STOP`.

    Attributes, read from any thread: ``peers`` (connections now), ``topics``
    (distinct prefixes now), ``refused`` (connections shut down by either
    cap), ``dropped`` (messages that did not fit every matching subscriber's
    queue, counted with ``XPUB_NODROP`` only).
    """

    def __init__(
        self,
        xpub: zmq.Socket[Any],
        inbox: zmq.Socket[Any],
        *,
        max_peers: int,
        bound_url: str,
    ) -> None:
        super().__init__(name="temseg-outlet", daemon=True)
        self._xpub = xpub
        self._inbox = inbox
        self._monitor = xpub.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
        )
        self._max_peers = max_peers
        self._local = _local_address(bound_url)
        self._connections: dict[int, bool] = {}  # descriptor -> shut down by us already
        self._last_warning: dict[str, float] = {}
        self.peers = 0
        self.topics = 0
        self.refused = 0
        self.dropped = 0

    def run(self) -> None:
        poller = zmq.Poller()
        for sock in (self._monitor, self._xpub, self._inbox):
            poller.register(sock, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._monitor in ready:
                    self._take_events()
                if self._xpub in ready:
                    self._take_subscriptions()
                if self._inbox in ready and not self._forward():
                    return
        except Exception as exc:  # nothing is published from now on: say so
            logger.error("the stream's thread stopped: %s; no more messages are sent", exc)
            logger.debug("traceback of the failure", exc_info=True)
        finally:
            self._xpub.disable_monitor()
            self._monitor.close(linger=0)
            self._inbox.close(linger=0)
            self._xpub.close()  # waits at most the socket's linger for queued messages

    def _forward(self) -> bool:
        """Send what the publisher queued (a batch); False once :data:`STOP` came."""
        for _ in range(_BATCH):
            try:
                parts = self._inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            if len(parts) == 1 and parts[0].bytes == STOP:
                return False
            try:
                self._xpub.send_multipart(parts, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.dropped += 1
        return True

    def _take_subscriptions(self) -> None:
        # Without XPUB_VERBOSE libzmq reports a prefix when the first peer adds it
        # and when the last one drops it: the notices count the table exactly.
        for _ in range(_BATCH):
            try:
                notice = self._xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if notice[:1] == b"\x01":
                self.topics += 1
            elif notice[:1] == b"\x00":
                self.topics -= 1
        if self.topics > MAX_TOPICS:
            self._shed_heaviest()

    def _take_events(self) -> None:
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._connections[fd] = False
                if len(self._connections) > self._max_peers:
                    self._warn(
                        "peers",
                        f"more than {self._max_peers} connections to {self._local[1]}: "
                        "closing the newest (setting 'max_subscribers')",
                    )
                    self._shut(fd)
            else:
                self._connections.pop(fd, None)
        self.peers = len(self._connections)

    def _shed_heaviest(self) -> None:
        live = [fd for fd, shut in self._connections.items() if not shut]
        if not live:
            return
        received = {fd: _bytes_received(fd) for fd in live}
        known = {fd: n for fd, n in received.items() if n is not None}
        targets = [max(known, key=known.__getitem__)] if known else live
        self._warn(
            "topics",
            f"subscribers on {self._local[1]} hold more than {MAX_TOPICS} prefixes: closing "
            f"{len(targets)} connection(s) that sent the most (see docs/reliability.md)",
        )
        for fd in targets:
            self._shut(fd)

    def _shut(self, fd: int) -> None:
        """Shut down the connection on descriptor ``fd`` if it is still one of ours.

        libzmq then sees the peer go and closes the descriptor itself; shutting
        it down takes no descriptor, so it works also when none is left.
        """
        self._connections[fd] = True
        self.refused += 1
        with _borrowed(fd) as conn:
            # libzmq may have closed fd and the number been reused since the event:
            # only a connection to our own endpoint is shut down.
            if conn is not None and _address_of(conn) == self._local:
                conn.shutdown(socket.SHUT_RDWR)

    def _warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._last_warning[kind] = now
            logger.warning(message)


def _local_address(url: str) -> tuple[str, str]:
    """(transport, address) of a bound endpoint, as :func:`_address_of` reports it."""
    transport, _, address = url.partition("://")
    if transport == "tcp":
        return transport, address.rsplit(":", 1)[1]
    return transport, address


def _address_of(conn: socket.socket) -> tuple[str, str]:
    if conn.family == socket.AF_UNIX:
        return "ipc", str(conn.getsockname())
    return "tcp", str(conn.getsockname()[1])


@contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket | None]:
    """The socket on descriptor ``fd`` (None if it is none), left open afterwards."""
    try:
        conn = socket.socket(fileno=fd)
    except OSError:
        yield None
        return
    try:
        yield conn
    except OSError:
        pass
    finally:
        conn.detach()


def _bytes_received(fd: int) -> int | None:
    """Bytes the peer on TCP descriptor ``fd`` has sent (Linux ``TCP_INFO``), or None."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    info = b""
    with _borrowed(fd) as conn:
        if tcp_info is not None and conn is not None and conn.family != socket.AF_UNIX:
            info = conn.getsockopt(socket.IPPROTO_TCP, tcp_info, 256)
    if len(info) < _TCP_INFO_BYTES_RECEIVED + 8:
        return None
    return int(struct.unpack_from("=Q", info, _TCP_INFO_BYTES_RECEIVED)[0])
