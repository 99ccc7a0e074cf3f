"""Stage *read*: a frame file's bytes, identity, decoded image and material.

Reads ``work.path``; fills ``sha256``, ``size_bytes``, ``mtime``, ``frame``
and ``material``, or sets ``skipped`` when the same (path, SHA-256) was
handled in this run or is recorded already. The file is opened once, by
:func:`~temseg.daemon.safe_read.read_listed`: below the watched folder
without following links, a regular file, the one that was listed, at most
``max_file_bytes``, within ``read_timeout_s``; the bytes that are hashed are
the bytes that are decoded. Decoding waits for room in the readers' shared
budget of decoded bytes (``max_decoded_bytes``) and refuses images above
``max_pixels``. A file that cannot be read or decoded fails the frame (it is
still recorded, under its identity). A read that fails for a reason of the
machine (no descriptor or memory left) is tried again a few times and then
abandoned unrecorded: the next start's backlog reads it again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from temseg.daemon.database import Database, retry_locked
from temseg.daemon.decode_budget import DecodeBudget
from temseg.daemon.frame_queue import SeenCache
from temseg.daemon.rules import MATERIAL_RULE, resolve_material, shown_path, valid_material
from temseg.daemon.safe_read import TransientReadError, read_listed
from temseg.daemon.work import FrameWork
from temseg.frames import FrameError, read_frame
from temseg.frames.read import decoded_bytes
from temseg.store import is_recorded

logger = logging.getLogger("temseg.daemon")

TRANSIENT_RETRIES_S = (0.1, 0.3, 1.0, 3.0)
"""Waits before the next tries after a transient read error (EMFILE, ENOMEM, ...)."""

DECODE_COPIES = 3
"""Decoded sizes a frame is taken to need while decoded: compressed strips, the image,
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
    """See the module docstring. ``folder_rules`` and ``default_material`` decide the
    material of frames whose metadata names none (:func:`resolve_material`)."""

    def __init__(
        self,
        db: Database,
        give_up: Callable[[], bool],
        folder_rules: Mapping[str, str],
        default_material: str,
        limits: ReadLimits,
    ) -> None:
        self._db = db
        self._give_up = give_up
        self._folder_rules = folder_rules
        self._default_material = default_material
        self._limits = limits
        self._budget = DecodeBudget(limits.max_decoded_bytes)
        self._seen = SeenCache()

    def __call__(self, work: FrameWork) -> None:
        data = b""
        try:
            read = self._read(work)
            if read is None:
                work.skipped = True  # abandoned: not the file's fault, no verdict recorded
                return
            data = read
            work.sha256, work.size_bytes = hashlib.sha256(data).hexdigest(), len(data)
        except FrameError as exc:
            work.error = str(exc)
        identity = (work.source or str(work.path), work.sha256)
        if not self._seen.add(identity) or retry_locked(
            partial(is_recorded, self._db, *identity), "duplicate check", self._give_up
        ):
            work.skipped = True
            return
        frame_material: str | None = None
        if work.error is None:
            frame_material = self._decode(work, data)
        if frame_material and not valid_material(frame_material):
            work.error = (
                f"{work.path}: material '{frame_material[:80]}' in the frame's metadata "
                f"is not a valid name ({MATERIAL_RULE})"
            )
            work.frame, frame_material = None, None
        work.material, _ = resolve_material(
            frame_material, work.relative, self._folder_rules, self._default_material
        )

    def _read(self, work: FrameWork) -> bytes | None:
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

    def _decode(self, work: FrameWork, data: bytes) -> str | None:
        """Decode within the budget; the frame's material, or None (``work.error`` set)."""
        max_pixels = self._limits.max_pixels
        try:
            need = DECODE_COPIES * decoded_bytes(work.path, data, max_pixels=max_pixels)
            if not self._budget.reserve(need, str(work.path), self._give_up):
                work.error = f"{work.path}: not decoded (stopping gave up)"
                work.skipped = True
                return None
        except FrameError as exc:
            work.error = str(exc)
            return None
        try:
            work.frame = read_frame(work.path, data=data, max_pixels=max_pixels)
            return work.frame.material
        except FrameError as exc:
            work.error = str(exc)
        except (OSError, MemoryError) as exc:
            work.error = f"{work.path}: cannot read ({exc})"
        finally:
            self._budget.release(need)
        return None
