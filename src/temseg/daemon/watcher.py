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

Folder trees are walked without recursion and only ``max_depth`` folders
deep (frames further down are ignored, logged once per folder at WARNING),
so a hostile ``mkdir -p`` of a thousand levels neither crashes the watcher
nor keeps the daemon from starting; a folder that cannot be read is logged
at WARNING and skipped.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import watchdog.observers.inotify as _inotify
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

from temseg.frames.find import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_PATTERNS,
    admissible,
    matches,
    scan_backlog,
    shown_path,
    walk,
    warn_once,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PATTERNS", "FrameWatcher", "admissible", "matches", "scan_backlog", "walk"]


class _BoundedWalkOs:
    """The ``os`` module as watchdog's inotify emitter sees it: ``walk`` is :func:`walk`.

    The emitter walks every new folder with ``os.walk``; on Python 3.11 a
    tree deeper than the recursion limit killed its thread (the watcher
    stopped for good) and, at every later start, the daemon itself.
    """

    walk = staticmethod(walk)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


if getattr(_inotify, "os", None) is os:
    _inotify.os = _BoundedWalkOs()  # type: ignore[assignment]


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        info = folder.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


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
        max_depth: int = DEFAULT_MAX_DEPTH,
        guard_interval_s: float = 0.5,
    ) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"watched folder {self.root} does not exist")
        self.patterns = tuple(patterns)
        self.recursive = recursive
        self.polling = polling
        self.follow_symlinks = follow_symlinks
        self.max_depth = max_depth
        self._stopping = False
        self._reported_dead = False
        self._on_frame = on_frame
        self._tracker = _StabilityTracker(stable_s, self._report)
        self._observer: BaseObserver = (
            PollingObserver(timeout=poll_interval_s) if polling else Observer()
        )
        self._schedule()
        self._root_identity = _identity(self.root)
        self._waiting_for_root = False
        self._rescan = False
        self._guard_stop = threading.Event()
        self._guard_interval_s = guard_interval_s
        self._guard = threading.Thread(
            target=self._guard_run, name="temseg-watch-guard", daemon=True
        )

    def _schedule(self) -> None:
        self._observer.schedule(
            _Handler(self),
            str(self.root),
            recursive=self.recursive,
            event_filter=[
                DirCreatedEvent,
                FileClosedEvent,
                FileCreatedEvent,
                FileModifiedEvent,
                FileMovedEvent,
                FileOpenedEvent,
            ],
            follow_symlink=self.follow_symlinks,
        )

    def _guard_run(self) -> None:
        """Re-arm the watch when the watched folder is deleted and made again.

        The observer stops watching a folder that is deleted; a folder made
        again under the same name is a new folder with no watch. Until it
        exists again the watcher counts as alive (it waits, logged once); then
        the watch is set up again and the frames already in the new folder
        are reported like those of any new folder.
        """
        while not self._guard_stop.wait(self._guard_interval_s):
            try:
                self._check_root()
            except Exception:  # the guard must keep guarding
                logger.exception("watch guard failed folder=%s", shown_path(self.root))

    def _check_root(self) -> None:
        identity = _identity(self.root)
        if identity is None:
            if not self._waiting_for_root:
                self._waiting_for_root = True
                logger.warning(
                    "watched folder=%s was deleted: waiting for it to be created again",
                    shown_path(self.root),
                )
            return
        if self._rescan:
            # The new watch starts on the observer's thread: a file made between the
            # scan below and that start would raise no event. Scan once more; a file
            # reported twice is skipped downstream (same path and bytes).
            self._rescan = False
            self._report_existing()
        emitters = list(self._observer.emitters)
        lost = not emitters or not all(e.is_alive() for e in emitters)
        if not (self._waiting_for_root or lost or identity != self._root_identity):
            return
        self._observer.unschedule_all()
        self._schedule()
        self._root_identity = identity
        self._waiting_for_root = False
        self._reported_dead = False
        logger.warning(
            "watching folder=%s again (it was deleted and made again, or its watch ended)",
            shown_path(self.root),
        )
        self._report_existing()
        self._rescan = True

    def _report_existing(self) -> None:
        """Report the frames in the watched folder, once stable (after a re-arm)."""
        for dirpath, _dirnames, filenames in walk(
            str(self.root), followlinks=self.follow_symlinks, max_depth=self.max_depth
        ):
            for name in filenames:
                self._candidate(Path(dirpath, name), complete=False)

    def start(self) -> None:
        """Start watching (events from now on; see :func:`scan_backlog` for older files)."""
        self._tracker.start()
        self._observer.start()
        self._guard.start()
        logger.info(
            "watching folder=%s mode=%s patterns=%s",
            self.root,
            "polling" if self.polling else "inotify",
            ",".join(self.patterns),
        )

    def stop(self) -> None:
        """Stop watching; files not yet stable are forgotten (the next backlog scan finds them)."""
        self._stopping = True
        self._guard_stop.set()
        if self._guard.is_alive():
            self._guard.join(timeout=5)
        self._tracker.stop()
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)

    def is_alive(self) -> bool:
        """True while the observer, the guard and the stability checker run.

        The first time a thread is found dead an ERROR is logged: a watcher
        that stopped must not go unnoticed.
        """
        # The emitters are not counted: the guard sets up a new one when one ends.
        threads = [self._observer, self._tracker._thread, self._guard]
        dead = [t.name for t in threads if not t.is_alive()]
        if dead and not self._stopping and not self._reported_dead:
            self._reported_dead = True
            logger.error(
                "watcher stopped: thread(s) %s of folder=%s ended; new frames are not seen "
                "until the daemon restarts",
                ", ".join(dead),
                shown_path(self.root),
            )
        return not dead

    def _candidate(self, path: Path, *, complete: bool) -> None:
        if not matches(path.name, self.patterns):
            return
        if self._depth(path.parent) > self.max_depth:
            warn_once(
                str(path.parent),
                f"ignoring frames in folder=%s: more than max_depth={self.max_depth} "
                "folder levels below the watched folder",
                logger,
            )
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
        left = self.max_depth - self._depth(folder)
        if left < 0:
            return
        for dirpath, _dirnames, filenames in walk(
            str(folder), followlinks=self.follow_symlinks, max_depth=left
        ):
            for name in filenames:
                self._candidate(Path(dirpath, name), complete=False)

    def _depth(self, path: Path) -> int:
        """Folder levels between the watched folder and ``path`` (a folder)."""
        try:
            return len(path.relative_to(self.root).parts)
        except ValueError:
            return 0

    def _report(self, path: Path) -> None:
        if not admissible(path, self.root, self.follow_symlinks):
            if path.is_symlink():
                logger.info("ignoring symbolic link path=%s", shown_path(path))
            return
        try:
            self._on_frame(path)
        except Exception:  # the watcher threads must survive whatever the callback does
            logger.exception("frame callback failed path=%s", shown_path(path))
