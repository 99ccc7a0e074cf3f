"""Stage *read*: a frame file's bytes, identity, decoded image and material.

Reads ``work.path``; fills ``sha256``, ``size_bytes``, ``mtime``, ``frame``
and ``material``, or sets ``skipped`` when the same (path, SHA-256) was
handled in this run or is recorded already. The file is opened once,
read-only: the bytes that are hashed are the bytes that are decoded. A
file that cannot be read or decoded fails the frame (it is still recorded,
under its identity).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from temseg.daemon.database import Database, retry_locked
from temseg.daemon.frame_queue import SeenCache
from temseg.daemon.rules import MATERIAL_RULE, resolve_material, valid_material
from temseg.daemon.work import FrameWork
from temseg.frames import FrameError, read_frame
from temseg.store import is_recorded


def read_bytes(path: Path) -> tuple[bytes, float]:
    """A file's content and modification time (POSIX s), from one open (read-only)."""
    with path.open("rb") as fh:
        mtime = os.fstat(fh.fileno()).st_mtime
        return fh.read(), mtime


class ReadStage:
    """See the module docstring. ``folder_rules`` and ``default_material`` decide the
    material of frames whose metadata names none (:func:`resolve_material`)."""

    def __init__(
        self,
        db: Database,
        give_up: Callable[[], bool],
        folder_rules: Mapping[str, str],
        default_material: str,
    ) -> None:
        self._db = db
        self._give_up = give_up
        self._folder_rules = folder_rules
        self._default_material = default_material
        self._seen = SeenCache()

    def __call__(self, work: FrameWork) -> None:
        data = b""
        try:
            data, work.mtime = read_bytes(work.path)
            work.sha256, work.size_bytes = hashlib.sha256(data).hexdigest(), len(data)
        except OSError as exc:
            work.error = f"{work.path}: cannot read ({exc.strerror or exc})"
        identity = (str(work.path), work.sha256)
        if not self._seen.add(identity) or retry_locked(
            partial(is_recorded, self._db, *identity), "duplicate check", self._give_up
        ):
            work.skipped = True
            return
        frame_material: str | None = None
        if work.error is None:
            try:
                work.frame = read_frame(work.path, data=data)  # the bytes that were hashed
                frame_material = work.frame.material
            except FrameError as exc:
                work.error = str(exc)
            except (OSError, MemoryError) as exc:
                work.error = f"{work.path}: cannot read ({exc})"
        if frame_material and not valid_material(frame_material):
            work.error = (
                f"{work.path}: material {frame_material[:80]!r} in the frame's metadata "
                f"is not a valid name ({MATERIAL_RULE})"
            )
            work.frame, frame_material = None, None
        work.material, _ = resolve_material(
            frame_material, work.relative, self._folder_rules, self._default_material
        )
