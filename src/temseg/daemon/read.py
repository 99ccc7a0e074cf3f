"""Stage *read*: a frame file's bytes, identity, decoded frames and material.

Reads ``work.path``; fills ``sha256``, ``size_bytes``, ``mtime``, ``frame``
(the file's first 2-D frame still to do, with ``frame_index`` and
``n_frames``), ``more`` (its later frames, each given its own work by the
pipeline) and ``material``, or sets ``skipped`` when the same (path,
SHA-256) was handled in this run or all its frames are recorded already.

The file is opened once, by :func:`~temseg.daemon.safe_read.read_listed`:
below the watched folder without following links, a regular file, the one
that was listed, at most ``max_file_bytes``, within ``read_timeout_s``; the
bytes that are hashed are the bytes that are decoded. Decoding waits for room
in the readers' shared budget of decoded bytes (``max_decoded_bytes``): a
TIFF reserves what its header says its frames decode to, other formats their
file size (their decoded size is known only once decoded); images above
``max_pixels`` are refused. A file that cannot be read or decoded fails as a
whole (it is still recorded, under its identity, as frame 0). A read that
fails for a reason of the machine (no descriptor or memory left) is tried
again a few times and then abandoned unrecorded: the next start's backlog
reads it again.

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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from temseg.daemon.database import Database, retry_locked
from temseg.daemon.decode_budget import DecodeBudget
from temseg.daemon.frame_queue import SeenCache
from temseg.daemon.read_buffers import ReadBuffers
from temseg.daemon.safe_read import TransientReadError, read_listed
from temseg.daemon.work import FrameWork
from temseg.frames import Frame, FrameError, IncompleteFrameError, detect_format, read_frames
from temseg.frames.find import MATERIAL_RULE, resolve_material, shown_path, valid_material
from temseg.frames.read import decoded_bytes
from temseg.store import recorded_frames

logger = logging.getLogger("temseg.daemon")

#: Reads of a file that ended early before it fails.
INCOMPLETE_RETRIES = 5
#: Formats whose writers fill the file in place, so that a complete-looking file may still grow.
WRITTEN_IN_PLACE = ("hdf5", "dm")

TRANSIENT_RETRIES_S = (0.1, 0.3, 1.0, 3.0)
"""Waits before the next tries after a transient read error (EMFILE, ENOMEM, ...)."""

DECODE_COPIES = 3
"""Decoded sizes a file is taken to need while decoded: compressed strips, the image,
a byte-swapped copy."""


@dataclass(frozen=True)
class ReadLimits:
    """What a reader accepts: see the settings of the same names."""

    root: Path
    max_file_bytes: int = 2 * 1024**3
    read_timeout_s: float = 60.0
    follow_symlinks: bool = False
    max_pixels: int = 2**28
    max_decoded_bytes: int = 4 * 1024**3


class ReadStage:
    """See the module docstring. Holds the run's seen-cache (thread-safe)."""

    def __init__(
        self,
        db: Database,
        give_up: Callable[[], bool],
        folder_rules: Mapping[str, str],
        default_material: str,
        limits: ReadLimits,
        *,
        read_again: Callable[[Path], object] | None = None,
        stable_s: float = 1.0,
        buffers: ReadBuffers | None = None,
    ) -> None:
        self._db = db
        self._give_up = give_up
        self._folder_rules = folder_rules
        self._default_material = default_material
        self._limits = limits
        self._budget = DecodeBudget(limits.max_decoded_bytes)
        self._read_again = read_again
        self._buffers = buffers
        self._stable_s = stable_s
        self._seen = SeenCache()
        self._tries: dict[Path, int] = {}  # reads so far of files that ended early

    def __call__(self, work: FrameWork) -> None:
        data: bytes | bytearray = b""
        try:
            read = self._read(work)
            if read is None:
                work.skipped = True  # abandoned: not the file's fault, no verdict recorded
                return
            data = read
            work.sha256, work.size_bytes = hashlib.sha256(data).hexdigest(), len(data)
        except FrameError as exc:
            work.error = str(exc)
        identity = (work.source or shown_path(work.path), work.sha256)
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
                frames = self._decode(work, data)
            except IncompleteFrameError as exc:
                if self._defer(work, identity, data, str(exc)):
                    return
                work.error = str(exc)
            except FrameError as exc:
                work.error = str(exc)
            except (OSError, MemoryError) as exc:
                work.error = f"{work.path}: cannot read ({exc})"
            if work.skipped:  # stopping gave up waiting for the decode budget
                return
        self._tries.pop(work.path, None)
        frame_material = frames[0].material if frames else None
        if frame_material and not valid_material(frame_material):
            work.error = (
                f"{work.path}: material '{frame_material[:80]}' in the frame's metadata "
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

    def _read(self, work: FrameWork) -> bytes | bytearray | None:
        """The file's bytes; None after transient errors only (``work.error`` says why)."""
        lim = self._limits
        for wait_s in (*TRANSIENT_RETRIES_S, None):
            try:
                data, work.mtime = read_listed(
                    work.path,
                    lim.root,
                    max_bytes=lim.max_file_bytes,
                    deadline_s=lim.read_timeout_s,
                    follow_symlinks=lim.follow_symlinks,
                    identity=work.identity,
                    into=self._buffers,
                )
                return data
            except TransientReadError as exc:
                if wait_s is None or self._give_up():
                    work.error = f"{work.path}: not read ({exc.strerror})"
                    return None
                logger.warning(
                    "transient read error path=%s error=%s; retrying in %.1f s",
                    shown_path(work.path),
                    exc.strerror,
                    wait_s,
                )
                time.sleep(wait_s)
        return None

    def _decode(self, work: FrameWork, data: bytes | bytearray) -> list[Frame]:
        """The file's frames, decoded within the budget; ``[]`` with ``work.skipped`` set
        when stopping gave up waiting for room. Raises FrameError for the file's verdict."""
        max_pixels = self._limits.max_pixels
        if not data:
            return read_frames(work.path, data=data, max_pixels=max_pixels)  # refused: empty
        if detect_format(work.path, data[:1024]) == "tiff":
            # The header says what the frames decode to; beyond the whole budget, a verdict.
            need = DECODE_COPIES * decoded_bytes(work.path, data, max_pixels=max_pixels)
        else:
            # Read by their own readers, which check sizes against the file: the file's size
            # stands for the decoded one, never more than the whole budget (never a verdict).
            need = min(DECODE_COPIES * len(data), self._budget.total_bytes)
        if not self._budget.reserve(need, str(work.source or work.path), self._give_up):
            work.error = f"{work.path}: not decoded (stopping gave up)"
            work.skipped = True
            return []
        try:
            return read_frames(work.path, data=data, max_pixels=max_pixels)
        finally:
            self._budget.release(need)

    def _defer(
        self, work: FrameWork, identity: tuple[str, str], data: bytes | bytearray, why: str
    ) -> bool:
        """Schedule another read of a file that ended early; False when it is to fail now."""
        tries = self._tries.get(work.path, 0)
        if self._read_again is None or tries >= INCOMPLETE_RETRIES or self._give_up():
            return False
        try:
            info = os.stat(work.path, follow_symlinks=False)
            changed = info.st_size != len(data) or info.st_mtime != work.mtime
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
