"""Which frames are in flight, and whether they move: the daemon's idea of health.

:class:`Progress` observes the event stream (``inline``) and keeps, for each
frame accepted and not yet finished, when it was detected and when it last
reached a stage. The pipeline is *wedged* when some frame has not reached its
next stage for ``stuck_after_s`` seconds: a read that never returns, an engine
call that hangs, a database that never answers. An idle pipeline (nothing in
flight) is not wedged, however long it waits.
"""

from __future__ import annotations

import threading
import time

from temseg.daemon.events import TERMINAL, FrameEvent


class Progress:
    """Frames in flight by ticket: detection time and the time of their last event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # ticket -> detection (time.monotonic(), s), until the frame is recorded or finished
        self._unrecorded: dict[int, float] = {}
        # ticket -> last event (time.monotonic(), s), until the frame's terminal event
        self._moved: dict[int, float] = {}

    def __call__(self, event: FrameEvent) -> None:
        now = time.monotonic()
        ticket, kind = event.ticket, event.kind
        with self._lock:
            if kind in TERMINAL:
                self._moved.pop(ticket, None)
                self._unrecorded.pop(ticket, None)
                return
            self._moved[ticket] = now
            if kind == "received":
                self._unrecorded[ticket] = now - event.latency_s
            elif kind == "recorded":
                self._unrecorded.pop(ticket, None)

    @property
    def in_flight(self) -> int:
        """Frames accepted and not yet finished."""
        with self._lock:
            return len(self._moved)

    def stalled_s(self) -> float:
        """Seconds since the frame that moved least recently last moved; 0 when idle."""
        with self._lock:
            oldest = min(self._moved.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def seconds_behind(self) -> float:
        """Age (s since detection) of the oldest complete frame not yet recorded; 0 if none."""
        with self._lock:
            oldest = min(self._unrecorded.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def wedged(self, stuck_after_s: float) -> bool:
        """True when a frame has not reached its next stage for ``stuck_after_s`` seconds."""
        return self.stalled_s() > stuck_after_s
