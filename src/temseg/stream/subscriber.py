"""Receive the mask stream: decode messages and detect sequence gaps."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from temseg.stream.keys import load_client_keys
from temseg.stream.protocol import (
    ERROR_TOPIC,
    MASK_TOPIC_PREFIX,
    ProtocolError,
    StreamMessage,
    decode_message,
)
from temseg.stream.publisher import DEFAULT_URL

logger = logging.getLogger(__name__)


class Subscriber:
    """One SUB socket connected to a publisher; an iterator of :class:`StreamMessage`.

    ``topics`` are prefixes (``"temseg."`` = everything, ``"temseg.mask.Au"``,
    ``"temseg.error"``). Sequence numbers count masks and errors together, so
    gaps are tracked only when the topics cover both; each gap is appended to
    :attr:`gaps` as ``(first missed seq, seq received)`` and logged as a
    warning. A new ``run_id`` (publisher restarted) starts a new sequence.
    Malformed messages are skipped, counted in :attr:`invalid` and logged.

    CURVE: ``curve_keys`` is the server's public key file with ``client_key``
    the client's ``.key_secret`` file, or a key folder (see
    :func:`temseg.stream.keys.load_client_keys`).

    ``timeout_ms``: default wait of :meth:`receive` (None = forever); iterating
    stops after that long without a message.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        topics: Sequence[str] = ("temseg.",),
        curve_keys: Path | None = None,
        client_key: Path | None = None,
        timeout_ms: int | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        if isinstance(topics, str):
            topics = (topics,)
        self.url = url
        self.timeout_ms = timeout_ms
        self.gaps: list[tuple[int, int]] = []
        self.invalid = 0
        self.received = 0
        self.tracks_gaps = any(
            MASK_TOPIC_PREFIX.startswith(t) and ERROR_TOPIC.startswith(t) for t in topics
        )
        self._last_seq: dict[str, int] = {}
        keys = None if curve_keys is None else load_client_keys(Path(curve_keys), client_key)
        if keys is None and client_key is not None:
            raise ValueError("client_key needs curve_keys (the server's public key)")
        self._own_context = context is None
        self._context: zmq.Context[Any] = zmq.Context() if context is None else context
        self._socket: zmq.Socket[Any] = self._context.socket(zmq.SUB)
        self._closed = False
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            if keys is not None:
                self._socket.curve_serverkey, self._socket.curve_publickey = keys[0], keys[1]
                self._socket.curve_secretkey = keys[2]
            for topic in topics:
                self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
            self._socket.connect(url)
        except BaseException:
            self.close()
            raise

    def receive(self, timeout_ms: int | None = None) -> StreamMessage | None:
        """Next valid message, or ``None`` after ``timeout_ms`` (default: the
        subscriber's ``timeout_ms``; None = wait forever)."""
        wait = self.timeout_ms if timeout_ms is None else timeout_ms
        deadline = None if wait is None else time.monotonic() + wait / 1000
        while True:
            remaining = (
                None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            )
            if not self._socket.poll(remaining, zmq.POLLIN):
                return None
            # Zero-copy: the mask is read where ZeroMQ received it. A copy of a 4096 px
            # mask (16 MiB) would hold this process's GIL for several ms per frame.
            parts = [frame.buffer for frame in self._socket.recv_multipart(copy=False)]
            try:
                message = decode_message(parts)
            except ProtocolError as exc:
                self.invalid += 1
                logger.warning("skipping malformed message from %s: %s", self.url, exc)
                continue
            self.received += 1
            self._check_seq(message.header["run_id"], message.header["seq"])
            return message

    def _check_seq(self, run_id: str, seq: int) -> None:
        last = self._last_seq.get(run_id)
        self._last_seq[run_id] = seq
        if last is None or not self.tracks_gaps or seq == last + 1:
            return
        if seq > last + 1:
            self.gaps.append((last + 1, seq))
            logger.warning(
                "missed %d message(s): seq %d..%d of run %s",
                seq - last - 1,
                last + 1,
                seq - 1,
                run_id,
            )
        else:
            logger.warning("seq went back from %d to %d in run %s", last, seq, run_id)

    def __iter__(self) -> Iterator[StreamMessage]:
        while (message := self.receive()) is not None:
            yield message

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._socket.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
