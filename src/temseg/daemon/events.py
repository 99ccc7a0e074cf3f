"""One event stream per frame: what happened to it, when, and how long it took.

Every frame the daemon accepts produces :class:`FrameEvent` objects of these
kinds, in this order, and ends with exactly one of the terminal kinds
(marked *):

- ``received``: accepted by the intake (watcher or backlog scan);
- ``read``: hashed, decoded and prepared for the model; ``stage_s`` is read
  to model input;
- ``skipped`` *: the same path and bytes were handled or recorded already;
- ``inferred``: the engine ran it; ``stage_s`` is its share of the engine
  call (a batch's time divided among its frames);
- ``segmented``: thresholded, particles measured, mask file written if
  asked; ``stage_s`` is the segmenter's time for it;
- ``recorded``: its row is committed (``frame_id``);
- ``published`` *: its mask message was handed to ZeroMQ (``seq``);
- ``failed`` *: it failed at some stage (``error`` says why); the failure
  was recorded and published on ``temseg.error``;
- ``abandoned`` *: not recorded, because stopping gave up on a locked
  database or recording failed; the next start's backlog scan finds it.

A frame that fails skips the events of the stages it did not reach. The
events of one frame carry the same ``ticket`` (the acceptance order);
``latency_s`` counts from the frame's detection. All times are seconds.

Observing frames (the daemon's statistics and log lines are observers too)::

    unsubscribe = daemon.events.subscribe(on_event)   # on_event(event) -> None
    ...
    unsubscribe()

``on_event`` runs on a thread of its own, fed through a bounded buffer: a slow
observer never holds up a frame (past ``max_pending`` events the oldest are
dropped, with one warning), and an exception in it is logged once and
otherwise ignored. ``inline=True`` calls the observer on the pipeline thread
that emits the event instead, in order with the frame's progress; it is for
observers that only update counters or write a log line, since the frame
waits for them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

logger = logging.getLogger("temseg.daemon")

EventKind: TypeAlias = Literal[
    "received",
    "read",
    "skipped",
    "inferred",
    "segmented",
    "recorded",
    "published",
    "failed",
    "abandoned",
]
#: The kinds that end a frame's events: exactly one of them per accepted frame.
TERMINAL: frozenset[EventKind] = frozenset({"skipped", "published", "failed", "abandoned"})


@dataclass(frozen=True, slots=True)
class FrameEvent:
    """One step of one frame through the pipeline (see the module docstring for the kinds)."""

    kind: EventKind
    path: Path  # the frame file, absolute
    relative_path: str  # below the watched folder, '/'-separated
    ticket: int  # acceptance order: the same for every event of one frame
    latency_s: float  # seconds from the frame's detection to this event
    stage_s: float | None = None  # seconds the stage took for this frame
    material: str = ""  # known from ``read`` on
    sha256: str = ""  # known from ``read`` on (and on ``skipped``)
    model_id: str | None = None  # from ``inferred`` on
    threshold: float | None = None  # from ``segmented`` on
    n_particles: int | None = None  # from ``segmented`` on
    frame_id: int | None = None  # the database row, from ``recorded`` on
    seq: int | None = None  # the stream message's sequence number, on ``published``
    error: str | None = None  # on ``failed`` and ``abandoned``


Observer: TypeAlias = Callable[[FrameEvent], object]


class _Guarded:
    """Calls an observer; its first exception is logged, none propagates."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self._complained = False

    def __call__(self, event: FrameEvent) -> None:
        try:
            self.observer(event)
        except Exception:
            if not self._complained:
                self._complained = True
                logger.exception(
                    "event observer %r failed on a %s event; its later failures are not logged",
                    self.observer,
                    event.kind,
                )


class _Mailbox:
    """A thread delivering events to one observer from a bounded buffer."""

    def __init__(self, observer: Observer, max_pending: int) -> None:
        self._call = _Guarded(observer)
        self._events: deque[FrameEvent] = deque(maxlen=max_pending)
        self._cond = threading.Condition()
        self._closed = False
        self._warned = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="temseg-events", daemon=True)
        self._thread.start()

    def put(self, event: FrameEvent) -> None:
        with self._cond:
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "event observer %r is behind by %d events: dropping the oldest",
                        self._call.observer,
                        self._events.maxlen,
                    )
            self._events.append(event)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._events or self._closed)
                if not self._events:
                    return
                event = self._events.popleft()
            self._call(event)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is buffered (for at most ``timeout_s``), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)


class EventStream:
    """Where the pipeline emits :class:`FrameEvent` objects and observers subscribe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inline: tuple[_Guarded, ...] = ()
        self._mailboxes: tuple[_Mailbox, ...] = ()

    def subscribe(
        self, observer: Observer, *, inline: bool = False, max_pending: int = 10_000
    ) -> Callable[[], None]:
        """Call ``observer(event)`` for every event from now on; return the unsubscribe.

        See the module docstring for ``inline`` and ``max_pending`` (events).
        """
        with self._lock:
            if inline:
                guarded = _Guarded(observer)
                self._inline += (guarded,)

                def unsubscribe() -> None:
                    with self._lock:
                        self._inline = tuple(g for g in self._inline if g is not guarded)

                return unsubscribe
            mailbox = _Mailbox(observer, max(1, max_pending))
            self._mailboxes += (mailbox,)

        def unsubscribe_queued() -> None:
            with self._lock:
                self._mailboxes = tuple(m for m in self._mailboxes if m is not mailbox)
            mailbox.close()

        return unsubscribe_queued

    def emit(self, event: FrameEvent) -> None:
        """Hand ``event`` to every observer; never raises, never waits for a queued one."""
        for guarded in self._inline:
            guarded(event)
        for mailbox in self._mailboxes:
            mailbox.put(event)

    def close(self) -> None:
        """Deliver the buffered events and stop the observers' threads."""
        with self._lock:
            mailboxes, self._mailboxes = self._mailboxes, ()
        for mailbox in mailboxes:
            mailbox.close()
