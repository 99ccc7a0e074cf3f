"""Publish masks and errors on one ZeroMQ XPUB socket without ever blocking."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from temseg.stream.outlet import PEER_QUEUE, STOP, Outlet
from temseg.stream.protocol import (
    ENCODINGS,
    SCHEMA_ERROR,
    EncodedMask,
    encode_error_message,
    encode_mask_message,
    mask_header,
)

DEFAULT_URL = "tcp://127.0.0.1:5557"

MAX_SUBSCRIPTION_BYTES = 128
"""Longest message a peer may send (``ZMQ_MAXMSGSIZE``). Subscribers only send
(un)subscriptions: one flag byte plus a topic prefix, and topics are at most
``temseg.mask.`` plus a 64-character material. libzmq disconnects a peer that
sends more, instead of keeping its prefix in the socket's subscription table."""

MAX_CURVE_SUBSCRIPTION_BYTES = 1024
""":data:`MAX_SUBSCRIPTION_BYTES` under CURVE, whose handshake is bound by the same
limit: its INITIATE command takes a few hundred bytes (256 refused every client)."""

logger = logging.getLogger(__name__)


def _start_zero_copy_collector() -> None:
    """Start pyzmq's collector thread, which frees the buffers of zero-copy sends.

    pyzmq starts it (and a context with ZeroMQ threads of its own) at the first
    zero-copy send, from the sending thread, whose scheduling policy it inherits.
    Starting it here, from the thread that creates the publisher, lets that thread
    lower its own priority afterwards without starving the stream. A zero-copy
    frame starts the collector exactly as a send would (thread-safe in pyzmq).
    """
    zmq.Frame(bytes(zmq.COPY_THRESHOLD), copy=False)


class Publisher:
    """One XPUB socket bound to ``url``; thread-confined (use it from one thread).

    Publishing never waits for a subscriber: a message goes through an
    in-process queue (``send_hwm`` messages) to the thread that owns the
    socket (:class:`~temseg.stream.outlet.Outlet`), and a message that does
    not fit that queue is counted in :attr:`dropped`. By default
    (``nodrop=False``) libzmq drops messages per slow subscriber once its queue
    (``send_hwm`` here plus the subscriber's receive HWM) is full; the
    publisher cannot see these drops, subscribers see them as ``seq`` gaps.
    With ``nodrop=True`` (``XPUB_NODROP``) a message that does not fit the
    queue of every matching subscriber is sent to none of them and counted in
    :attr:`dropped`.

    ``curve_keys``: a folder made by :func:`temseg.stream.keys.generate_keys`;
    the socket then encrypts (CURVE server, ``server.key_secret``) and only
    clients whose public key is in ``authorized/`` may subscribe. Keys are read
    at start. The CURVE authenticator is installed on the socket's context:
    without ``context`` the publisher uses a context of its own.

    Attributes: ``run_id`` (uuid4 hex of this publisher), ``seq`` (last
    sequence number used; 0 before the first message), ``dropped``,
    ``bound_url`` (resolved endpoint, e.g. the port chosen for ``tcp://...:0``),
    ``outlet`` (its ``peers``, ``topics`` and ``refused`` count the connections).

    At most ``max_peers`` connections are kept, and at most
    :data:`~temseg.stream.outlet.MAX_TOPICS` distinct subscription prefixes of
    at most :data:`MAX_SUBSCRIPTION_BYTES` each; a peer that goes past them is
    disconnected. That bounds what an unauthenticated peer can cost; a socket
    that an untrusted peer can reach still needs ``curve_keys`` (see
    ``docs/reliability.md``).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        send_hwm: int = 100,
        encoding: str = "raw",
        send_probability: bool = False,
        curve_keys: Path | None = None,
        nodrop: bool = False,
        context: zmq.Context[Any] | None = None,
        linger_ms: int = 1000,
        max_peers: int = 256,
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.encoding = encoding
        self.send_probability = send_probability
        self.run_id = uuid.uuid4().hex
        self.seq = 0
        self._not_queued = 0
        self._own_context = context is None
        self._context: zmq.Context[Any] = zmq.Context() if context is None else context
        self._auth: ThreadAuthenticator | None = None
        self._closed = False
        self._socket: zmq.Socket[Any] = self._context.socket(zmq.PAIR)
        self._socket.setsockopt(zmq.SNDHWM, send_hwm)
        xpub: zmq.Socket[Any] = self._context.socket(zmq.XPUB)
        self.outlet: Outlet | None = None
        _start_zero_copy_collector()
        try:
            xpub.setsockopt(zmq.LINGER, linger_ms)
            xpub.setsockopt(zmq.SNDHWM, send_hwm)
            xpub.setsockopt(zmq.RCVHWM, PEER_QUEUE)
            limit = MAX_SUBSCRIPTION_BYTES if curve_keys is None else MAX_CURVE_SUBSCRIPTION_BYTES
            xpub.setsockopt(zmq.MAXMSGSIZE, limit)
            if nodrop:
                xpub.setsockopt(zmq.XPUB_NODROP, 1)
            if curve_keys is not None:
                self._setup_curve(xpub, Path(curve_keys))
            try:
                xpub.bind(url)
            except zmq.ZMQError as exc:
                raise zmq.ZMQError(exc.errno, f"cannot bind {url}: {exc.strerror}") from exc
            self.bound_url: str = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
            inbox = self._context.socket(zmq.PAIR)
            inbox.setsockopt(zmq.RCVHWM, send_hwm)
            inbox.bind(f"inproc://temseg-publisher-{self.run_id}")
            self._socket.connect(f"inproc://temseg-publisher-{self.run_id}")
            self.outlet = Outlet(xpub, inbox, max_peers=max_peers, bound_url=self.bound_url)
            self.outlet.start()
        except BaseException:
            xpub.close(linger=0)
            self.close()
            raise

    @property
    def dropped(self) -> int:
        """Messages not sent: beyond the outlet's queue, or (``nodrop``) a subscriber's."""
        return self._not_queued + (0 if self.outlet is None else self.outlet.dropped)

    def _setup_curve(self, xpub: zmq.Socket[Any], keys: Path) -> None:
        if not zmq.has("curve"):
            raise RuntimeError("this libzmq has no CURVE support")
        secret_file, authorized = keys / "server.key_secret", keys / "authorized"
        if not secret_file.is_file():
            raise FileNotFoundError(
                f"no server secret key {secret_file}; run `temseg keys generate`"
            )
        if not authorized.is_dir():
            raise FileNotFoundError(f"no folder of authorized client keys {authorized}")
        public, secret = zmq.auth.load_certificate(secret_file)
        if secret is None:
            raise ValueError(f"{secret_file} holds no secret key")
        if not any(authorized.glob("*.key")):
            logger.warning("no client keys in %s: no subscriber can connect", authorized)
        self._auth = ThreadAuthenticator(self._context, log=logger)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(authorized))
        xpub.curve_secretkey = secret
        xpub.curve_publickey = public
        xpub.curve_server = True

    def publish_mask(
        self,
        header_fields: Mapping[str, Any],
        mask: np.ndarray | EncodedMask,
        probability: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Send one mask; return the header as sent.

        ``header_fields`` must hold ``material`` and should hold the frame
        fields of ``docs/protocol.md``; ``schema``, ``seq``, ``run_id``,
        ``published_at``, ``shape``, ``dtype`` and ``encoding`` are filled in.
        ``mask`` is a 0/1 array, or one encoded ahead with this publisher's
        ``encoding`` (:func:`~temseg.stream.protocol.encode_mask`, e.g. on
        another thread). ``probability`` is sent only if the publisher has
        ``send_probability``.
        """
        prob = probability if self.send_probability else None
        fields = self._stamp(header_fields)
        parts = encode_mask_message(fields, mask, encoding=self.encoding, probability=prob)
        self._send(parts)
        return mask_header(
            fields,
            mask.shape if isinstance(mask, EncodedMask) else np.shape(mask),
            encoding=self.encoding,
            probability=prob is not None,
        )

    def publish_error(
        self, source: str, error: str, *, frame_index: int | None = None
    ) -> dict[str, Any]:
        """Send an error report about ``source`` (its frame ``frame_index`` when one frame of
        a stack failed); return the header as sent."""
        fields: dict[str, Any] = {"source": str(source), "error": str(error)}
        if frame_index is not None:
            fields["frame_index"] = int(frame_index)
        header = {"schema": SCHEMA_ERROR, **self._stamp(fields)}
        self._send(encode_error_message(header))
        return header

    def _stamp(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        # The sequence number is taken only once the message is encoded and sent.
        return {
            **fields,
            "seq": self.seq + 1,
            "run_id": self.run_id,
            "published_at": datetime.now(UTC).isoformat(),
        }

    def _send(self, parts: Sequence[bytes | memoryview]) -> None:
        if self._closed:
            raise RuntimeError("publisher is closed")
        self.seq += 1
        try:
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._not_queued += 1

    def close(self) -> None:
        """Close the socket (waiting at most ``linger_ms`` for queued messages)."""
        if self._closed:
            return
        self._closed = True
        if self.outlet is not None and self.outlet.is_alive():
            self._socket.send(STOP)  # after every queued message; the outlet then closes
            self.outlet.join()
        self._socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
