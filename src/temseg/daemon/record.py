"""Sink *record*: the frame's row in the database, before anything is published.

Reads what the stages before filled in; fills ``frame_id`` (the row, which
the stream message then carries), ``seq`` (the number the frame's message
will get) and ``latency_s`` (detection to record). A failed frame is
recorded with status "failed" and its error; a done frame with its model,
threshold, mask geometry and particles; every frame with the ``instrument``
(the microscope's name in the settings, or none). A locked database is retried until
it answers or stopping gives up (:func:`~temseg.daemon.database.retry_locked`);
giving up raises, and the frame stays unrecorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from temseg.daemon.database import Database, retry_locked
from temseg.daemon.events import EventKind
from temseg.daemon.faults import FaultPoints
from temseg.daemon.rules import shown_path
from temseg.daemon.work import FrameWork
from temseg.store import record_frame


class RecordSink:
    """See the module docstring; ``next_seq()`` is the sequence number the publisher gives
    its next message."""

    event: EventKind | None = "recorded"

    def __init__(
        self,
        db: Database,
        next_seq: Callable[[], int],
        give_up: Callable[[], bool],
        faults: FaultPoints,
        check_db: Callable[[], None] | None = None,
        *,
        instrument: str | None,
    ) -> None:
        self._check_db = check_db
        self._db = db
        self._instrument = instrument
        self._next_seq = next_seq
        self._give_up = give_up
        self._faults = faults

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __call__(self, work: FrameWork) -> None:
        if self._check_db is not None:
            self._check_db()  # raises when the database file is gone: nothing is recorded
        work.latency_s = time.monotonic() - work.detected
        work.seq = self._next_seq()
        fields: dict[str, Any] = {
            "source_path": work.source or shown_path(work.path),
            "sha256": work.sha256,
            "size_bytes": work.size_bytes,
            "material": work.material,
            "received_at": work.received_at,
            "latency_ms": work.latency_s * 1e3,
            "seq": work.seq,
            "frame_index": work.frame_index,
            "n_frames": work.n_frames,
            "instrument": self._instrument,
        }
        seg = work.segmentation
        if seg is None or work.error is not None:
            fields.update(status="failed", error=shown_path(work.error or "unknown error"))
        else:
            assert work.model is not None and work.frame is not None
            height, width = seg.mask.shape
            fields.update(
                status="done",
                model_id=work.model.model_id,
                threshold=seg.threshold,
                n_particles=seg.n_particles,
                area_fraction=seg.area_fraction,
                mask_path=None if work.mask_path is None else str(work.mask_path),
                height=height,
                width=width,
                pixel_nm=work.frame.pixel_nm,
                pixel_nm_yx=work.frame.pixel_nm_yx,
                backend=work.model.engine.backend,
                particles=seg.particles,
            )
        work.frame_id = retry_locked(
            lambda: record_frame(self._db, **fields), "record", self._give_up
        )
        self._faults.reached("record")
