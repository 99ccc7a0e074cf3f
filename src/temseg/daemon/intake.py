"""Stage *intake*: complete frame files in, one :class:`~temseg.daemon.work.FrameWork` each out.

Frames come from the watcher (:class:`~temseg.daemon.watcher.FrameWatcher`
decides when a file is complete) and, at start, from a scan of the files
already there, oldest first (:func:`~temseg.daemon.watcher.scan_backlog`).
:meth:`Intake.submit` fills ``path``, ``relative``, ``received_at``,
``detected`` and ``ticket`` (the acceptance order) and hands the frame to
the readers; it waits while every reader is busy (back-pressure: nothing is
dropped, the watcher's events buffer meanwhile). Whether the bytes were
seen before is the read stage's question.

The intake also counts the frames in flight (accepted, not yet finished)
for :meth:`wait_idle` and for stopping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from temseg.config import Settings
from temseg.daemon.events import FrameEvent
from temseg.daemon.observers import DaemonStats
from temseg.daemon.rules import shown_path
from temseg.daemon.watcher import FrameWatcher
from temseg.daemon.work import FrameWork
from temseg.frames.find import relative_posix, scan_backlog

logger = logging.getLogger("temseg.daemon")


def _listed_identity(path: Path, follow_symlinks: bool) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file as listed; the reader refuses another file in its place."""
    try:
        info = path.stat() if follow_symlinks else path.lstat()
    except OSError:
        return None  # gone already: the read says so
    return info.st_dev, info.st_ino


class Intake:
    """See the module docstring. ``slots`` frames may be with the readers at once;
    ``hand_off(work)`` gives a frame to them (called under the intake's lock)."""

    def __init__(
        self,
        root: Path,
        settings: Settings,
        *,
        slots: int,
        emit: Callable[[FrameEvent], None],
        stats: DaemonStats,
    ) -> None:
        self.root = root
        self._settings = settings
        self._emit = emit
        self._stats = stats
        self._slots = threading.Semaphore(slots)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding = 0  # accepted and not yet finished
        self._next_ticket = 0
        self._hand_off: Callable[[FrameWork], None] | None = None
        self.closing = threading.Event()
        self._backlog_submitted = threading.Event()
        self._watcher: FrameWatcher | None = None

    def start(self, hand_off: Callable[[FrameWork], None]) -> None:
        """Start watching and submitting the backlog; frames go to ``hand_off``."""
        s = self._settings
        self._hand_off = hand_off
        self._watcher = FrameWatcher(
            self.root,
            self.submit,
            patterns=s.patterns,
            recursive=s.recursive,
            polling=s.polling,
            poll_interval_s=s.poll_interval_s,
            stable_s=s.stable_s,
            follow_symlinks=s.follow_symlinks,
            max_depth=s.max_depth,
        )
        self._watcher.start()
        threading.Thread(target=self._backlog, name="temseg-backlog", daemon=True).start()

    def close(self) -> None:
        """Accept nothing more; stop watching (files not yet complete are the next backlog's)."""
        with self._lock:  # submit() hands off under this lock
            self.closing.set()
        if self._watcher is not None:
            self._watcher.stop()

    def submit(self, path: Path) -> bool:
        """Accept a complete frame file; waits while all readers are busy. False once closing."""
        path = Path(path)
        work = FrameWork(
            path=path,
            relative=relative_posix(path, self.root),
            received_at=datetime.now(UTC),
            detected=time.monotonic(),
            source=shown_path(path),
            identity=_listed_identity(path, self._settings.follow_symlinks),
        )
        while not self._slots.acquire(timeout=0.1):
            if self.closing.is_set():
                return False
        with self._lock:
            if self.closing.is_set() or self._hand_off is None:
                self._slots.release()
                return False
            self._outstanding += 1
            self._stats.max_pending = max(self._stats.max_pending, self._outstanding)
            work.ticket = self._next_ticket
            self._next_ticket += 1
            self._emit(work.event("received"))
            self._hand_off(work)
        return True

    def more_frames(self, n: int) -> None:
        """An accepted file holds ``n`` more 2-D frames, each to be finished on its own."""
        with self._lock:
            self._outstanding += n
            self._stats.max_pending = max(self._stats.max_pending, self._outstanding)

    def slot_free(self) -> None:
        """A frame left the readers: the next may be accepted."""
        self._slots.release()

    def finished(self) -> None:
        """A frame's last event was emitted."""
        with self._idle:
            self._outstanding -= 1
            self._idle.notify_all()

    @property
    def pending(self) -> int:
        """Frames accepted and not yet finished."""
        with self._lock:
            return self._outstanding

    def watching(self) -> bool:
        return self._watcher is not None and self._watcher.is_alive()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until the backlog is submitted and no accepted frame is pending (False: timeout)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self._backlog_submitted.wait(timeout_s):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, remaining)

    def _backlog(self) -> None:
        try:
            self._submit_backlog()
        finally:
            self._backlog_submitted.set()

    def _submit_backlog(self) -> None:
        s = self._settings
        try:
            paths = scan_backlog(self.root, s.patterns, s.recursive, s.follow_symlinks, s.max_depth)
        except OSError as exc:
            logger.error("backlog scan of %s failed: %s", shown_path(self.root), exc)
            return
        self._stats.backlog = len(paths)
        if paths:
            logger.info("backlog frames=%d (oldest first)", len(paths))
        for path in paths:
            if self.closing.is_set() or not self.submit(path):
                return
