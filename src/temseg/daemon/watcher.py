"""Watch an acquisition folder and report each frame once it is complete.

A frame file is reported (``on_frame(path)``) only when nobody is writing it:

- inotify (default): on the close of a file opened for writing
  (``FileClosedEvent``), on a rename into place (``x.part`` -> ``x.tif``,
  ``FileMovedEvent`` whose destination matches), or for a file that appears
  without being opened (moved in from another folder, hard-linked) once its
  size and modification time have been stable for ``stable_s`` seconds;
- polling (``polling=True``, for network shares where inotify sees nothing):
  when size and modification time have been unchanged for ``stable_s`` seconds,
  or at once on a rename into place.

File names are matched against ``patterns`` (shell globs, case-insensitive).
Symbolic links are ignored unless ``follow_symlinks``; even then, a link
resolving outside the watched folder is ignored. Nothing in the folder is
ever written: files are only stat()ed here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from temseg.frames.find import DEFAULT_PATTERNS, admissible, matches, scan_backlog

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PATTERNS", "FrameWatcher", "admissible", "matches", "scan_backlog"]


class _StabilityTracker:
    """Paths waiting for size and mtime to stay unchanged for ``stable_s`` seconds."""

    def __init__(self, stable_s: float, emit: Callable[[Path], object]) -> None:
        self._stable_s = max(0.0, stable_s)
        self._emit = emit
        self._pending: dict[Path, tuple[int, int, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tick = min(0.25, max(0.05, self._stable_s / 4))
        self._thread = threading.Thread(target=self._run, name="temseg-stability", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def add(self, path: Path) -> None:
        with self._lock:
            self._pending[path] = (-1, -1, time.monotonic())

    def discard(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _due(self) -> list[Path]:
        now = time.monotonic()
        due: list[Path] = []
        with self._lock:
            for path, (size, mtime, since) in list(self._pending.items()):
                try:
                    st = path.stat()
                except OSError:  # deleted or renamed away before it settled
                    del self._pending[path]
                    continue
                if (st.st_size, st.st_mtime_ns) != (size, mtime):
                    self._pending[path] = (st.st_size, st.st_mtime_ns, now)
                elif now - since >= self._stable_s:
                    del self._pending[path]
                    due.append(path)
        return due

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            for path in self._due():
                if self._stop.is_set():
                    return
                self._emit(path)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FrameWatcher) -> None:
        self._w = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        w = self._w
        if isinstance(event, DirCreatedEvent):
            w._new_folder(Path(os.fsdecode(event.src_path)))
            return
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            w._tracker.discard(Path(os.fsdecode(event.src_path)))
            if event.dest_path:
                w._candidate(Path(os.fsdecode(event.dest_path)), complete=True)
            return
        path = Path(os.fsdecode(event.src_path))
        if isinstance(event, FileClosedEvent):
            w._tracker.discard(path)
            w._candidate(path, complete=True)
        elif isinstance(event, FileCreatedEvent):
            w._candidate(path, complete=False)
        elif isinstance(event, FileModifiedEvent):
            if w.polling:
                w._candidate(path, complete=False)
            else:  # a writer is at work: its close will report the file
                w._tracker.discard(path)
        elif isinstance(event, FileOpenedEvent):
            w._tracker.discard(path)


class FrameWatcher:
    """Calls ``on_frame(path)`` once for each frame file that becomes complete under ``root``.

    ``on_frame`` runs on the watcher's threads and may block (back-pressure);
    file system events are buffered meanwhile. Paths passed are absolute,
    under the resolved ``root``.
    """

    def __init__(
        self,
        root: str | Path,
        on_frame: Callable[[Path], object],
        *,
        patterns: Iterable[str] = DEFAULT_PATTERNS,
        recursive: bool = True,
        polling: bool = False,
        poll_interval_s: float = 1.0,
        stable_s: float = 1.0,
        follow_symlinks: bool = False,
    ) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"watched folder {self.root} does not exist")
        self.patterns = tuple(patterns)
        self.recursive = recursive
        self.polling = polling
        self.follow_symlinks = follow_symlinks
        self._on_frame = on_frame
        self._tracker = _StabilityTracker(stable_s, self._report)
        self._observer: BaseObserver = (
            PollingObserver(timeout=poll_interval_s) if polling else Observer()
        )
        self._observer.schedule(
            _Handler(self),
            str(self.root),
            recursive=recursive,
            event_filter=[
                DirCreatedEvent,
                FileClosedEvent,
                FileCreatedEvent,
                FileModifiedEvent,
                FileMovedEvent,
                FileOpenedEvent,
            ],
            follow_symlink=follow_symlinks,
        )

    def start(self) -> None:
        """Start watching (events from now on; see :func:`scan_backlog` for older files)."""
        self._tracker.start()
        self._observer.start()
        logger.info(
            "watching folder=%s mode=%s patterns=%s",
            self.root,
            "polling" if self.polling else "inotify",
            ",".join(self.patterns),
        )

    def stop(self) -> None:
        """Stop watching; files not yet stable are forgotten (the next backlog scan finds them)."""
        self._tracker.stop()
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)

    def is_alive(self) -> bool:
        """True while the observer and the stability checker run."""
        return self._observer.is_alive() and self._tracker.is_alive()

    def _candidate(self, path: Path, *, complete: bool) -> None:
        if not matches(path.name, self.patterns):
            return
        if complete:
            self._report(path)
        else:
            self._tracker.add(path)

    def _new_folder(self, folder: Path) -> None:
        """Files written into a new folder before its watch existed raise no event:
        treat those already there as appearing now (reported once stable)."""
        if not self.recursive or self.polling:
            return  # polling snapshots see them; non-recursive ignores sub-folders
        for dirpath, _dirnames, filenames in os.walk(folder, followlinks=self.follow_symlinks):
            for name in filenames:
                self._candidate(Path(dirpath, name), complete=False)

    def _report(self, path: Path) -> None:
        if not admissible(path, self.root, self.follow_symlinks):
            if path.is_symlink():
                logger.info("ignoring symbolic link path=%s", path)
            return
        try:
            self._on_frame(path)
        except Exception:  # the watcher threads must survive whatever the callback does
            logger.exception("frame callback failed path=%s", path)
