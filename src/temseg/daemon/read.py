"""Stage *read*: a frame file's bytes, identity, decoded frames and material.

Reads ``work.path``; fills ``sha256``, ``size_bytes``, ``mtime``, ``frame``
(the file's first 2-D frame still to do, with ``frame_index`` and
``n_frames``), ``more`` (its later frames, each given its own work by the
pipeline) and ``material``, or sets ``skipped`` when the same (path,
SHA-256) was handled in this run or all its frames are recorded already.
The file is opened once, read-only: the bytes that are hashed are the bytes
that are decoded. A file that cannot be read or decoded fails as a whole
(it is still recorded, under its identity, as frame 0).

A file that ends before its own header says it should
(:class:`~temseg.frames.IncompleteFrameError`) is still being written:
formats written in place (HDF5/EMD, DM3/DM4), and any file whose size or
modification time changed since it was read, are read again after
``stable_s`` (at least 1 s) times the attempt number, up to
:data:`INCOMPLETE_RETRIES` times (``deferred``); only then do they fail.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from temseg.daemon.database import Database, retry_locked
from temseg.daemon.frame_queue import SeenCache
from temseg.daemon.work import FrameWork
from temseg.frames import Frame, FrameError, IncompleteFrameError, detect_format, read_frames
from temseg.frames.find import MATERIAL_RULE, resolve_material, valid_material
from temseg.store import recorded_frames

logger = logging.getLogger("temseg.daemon")

#: Reads of a file that ended early before it fails.
INCOMPLETE_RETRIES = 5
#: Formats whose writers fill the file in place, so that a complete-looking file may still grow.
WRITTEN_IN_PLACE = ("hdf5", "dm")


def read_bytes(path: Path) -> tuple[bytes, float]:
    """A file's content and modification time (POSIX s), from one open (read-only)."""
    with path.open("rb") as fh:
        mtime = os.fstat(fh.fileno()).st_mtime
        return fh.read(), mtime


class ReadStage:
    """See the module docstring. ``folder_rules`` and ``default_material`` decide the
    material of frames whose metadata names none (:func:`resolve_material`);
    ``read_again(path)`` submits a file again (the intake's ``submit``), and
    ``stable_s`` paces those retries."""

    def __init__(
        self,
        db: Database,
        give_up: Callable[[], bool],
        folder_rules: Mapping[str, str],
        default_material: str,
        *,
        read_again: Callable[[Path], object] | None = None,
        stable_s: float = 1.0,
    ) -> None:
        self._db = db
        self._give_up = give_up
        self._folder_rules = folder_rules
        self._default_material = default_material
        self._read_again = read_again
        self._stable_s = stable_s
        self._seen = SeenCache()
        self._tries: dict[Path, int] = {}  # reads so far of files that ended early

    def __call__(self, work: FrameWork) -> None:
        data = b""
        try:
            data, work.mtime = read_bytes(work.path)
            work.sha256, work.size_bytes = hashlib.sha256(data).hexdigest(), len(data)
        except OSError as exc:
            work.error = f"{work.path}: cannot read ({exc.strerror or exc})"
        identity = (str(work.path), work.sha256)
        done: set[int] = set()  # frames of these bytes recorded already (a restart mid-stack)
        n_frames: int | None = None
        fresh = self._seen.add(identity)
        if fresh:
            done, n_frames = retry_locked(
                partial(recorded_frames, self._db, *identity), "duplicate check", self._give_up
            )
        if not fresh or (n_frames is not None and len(done) >= n_frames):
            work.skipped = True
            return
        frames: list[Frame] = []
        if work.error is None:
            try:
                frames = read_frames(work.path, data=data)  # the bytes that were hashed
            except IncompleteFrameError as exc:
                if self._defer(work, identity, data, str(exc)):
                    return
                work.error = str(exc)
            except FrameError as exc:
                work.error = str(exc)
            except (OSError, MemoryError) as exc:
                work.error = f"{work.path}: cannot read ({exc})"
        self._tries.pop(work.path, None)
        frame_material = frames[0].material if frames else None
        if frame_material and not valid_material(frame_material):
            work.error = (
                f"{work.path}: material {frame_material[:80]!r} in the frame's metadata "
                f"is not a valid name ({MATERIAL_RULE})"
            )
            frames, frame_material = [], None
        work.material, _ = resolve_material(
            frame_material, work.relative, self._folder_rules, self._default_material
        )
        todo = [f for f in frames if f.frame_index not in done]
        if todo:
            work.frame, work.more = todo[0], todo[1:]
            work.frame_index, work.n_frames = todo[0].frame_index, todo[0].n_frames

    def _defer(self, work: FrameWork, identity: tuple[str, str], data: bytes, why: str) -> bool:
        """Schedule another read of a file that ended early; False when it is to fail now."""
        tries = self._tries.get(work.path, 0)
        if self._read_again is None or tries >= INCOMPLETE_RETRIES or self._give_up():
            return False
        try:
            stat = work.path.stat()
            changed = stat.st_size != len(data) or stat.st_mtime != work.mtime
        except OSError:
            return False
        if not changed and detect_format(work.path, data[:1024]) not in WRITTEN_IN_PLACE:
            return False  # a truncated TIFF, MRC or SER that nobody is writing
        self._tries[work.path] = tries + 1
        self._seen.discard(identity)  # the same bytes may well be read again
        delay_s = max(self._stable_s, 1.0) * (tries + 1)
        timer = threading.Timer(delay_s, self._read_again, args=(work.path,))
        timer.daemon = True
        timer.start()
        work.skipped = work.deferred = True
        work.error = f"{why}; read again in {delay_s:.1f} s"
        return True
