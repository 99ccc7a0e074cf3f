"""What travels through the stages: one :class:`FrameWork` per frame, and the stage interface.

A stage is a callable that reads the fields earlier stages filled in and
fills in its own (listed in each stage module's docstring). It fails a
frame by setting ``error`` (a one-line message naming the file); the
frame's remaining per-frame stages are then skipped and the sinks record
and publish the failure. Error texts name the file as it is on disk; they
are escaped once (:func:`~temseg.daemon.rules.shown_path`) where they leave
the process: the row, the message, the event. Where the stages are listed, and on which threads
they run: :mod:`temseg.daemon.pipeline`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from temseg.daemon.events import EventKind, FrameEvent
from temseg.daemon.rules import shown_path

if TYPE_CHECKING:
    import numpy as np

    from temseg.daemon.models import ServedModel
    from temseg.frames import Frame
    from temseg.inference import ModelInput
    from temseg.segment import Segmentation
    from temseg.stream.protocol import EncodedMask

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(eq=False)
class FrameWork:
    """One frame on its way through the stages; each group of fields is filled by one stage."""

    # intake
    path: Path
    relative: str  # below the watched folder, '/'-separated
    received_at: datetime  # UTC
    detected: float  # time.monotonic() at detection
    source: str = ""  # the path as recorded, published and logged (rules.shown_path)
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) when listed
    ticket: int = 0  # acceptance order: frames enter the frame queue in this order
    # read
    sha256: str = EMPTY_SHA256
    size_bytes: int = 0
    mtime: float | None = None  # POSIX seconds, when the file was last written
    frame: Frame | None = None
    frame_index: int = 0  # which 2-D frame of the file (stacks, movies, several signals)
    n_frames: int = 1  # 2-D frames in the file
    more: list[Frame] = field(default_factory=list)  # the file's later frames still to do
    material: str = ""
    skipped: bool = False  # already handled or recorded: same path and bytes
    deferred: bool = False  # ended early (still being written): read again later
    read_s: float = 0.0  # the readers' time: read to model input
    # prepare (None again once inferred: its memory goes)
    model_input: ModelInput | None = None
    # infer
    model: ServedModel | None = None
    probability: np.ndarray | None = None  # model grid; once segmented, float16 or None
    mask: np.ndarray | None = None  # uint8 0/1, frame grid: from an engine that thresholds
    frame_shape: tuple[int, int] = (0, 0)  # pixels
    threshold: float | None = None
    threshold_source: str = ""  # "calibration" or "bundle"
    infer_s: float = 0.0  # the batch's engine time divided among its frames
    # segment
    segmentation: Segmentation | None = None
    segment_s: float = 0.0  # thresholding and particle measurement
    encoded_mask: EncodedMask | None = None  # PackBits, when that is the stream's encoding
    preview: dict[str, Any] | None = None  # the message's frame preview (send_preview_px)
    # masks
    mask_path: Path | None = None  # the mask TIFF written
    # record and publish
    frame_id: int | None = None
    seq: int | None = None  # the stream message's sequence number
    latency_s: float = 0.0  # detection to record
    # any stage
    error: str | None = None

    def batch_key(self) -> tuple[Any, ...]:
        """Frames with equal keys may share an engine call (same shape and pixel size)."""
        if self.frame is None:
            return ("failed",)
        return ("frame", self.frame.image.shape, self.frame.pixel_nm_yx)

    def event(self, kind: EventKind, stage_s: float | None = None) -> FrameEvent:
        """This frame's event of ``kind`` now, with what is known of the frame so far."""
        seg = self.segmentation
        return FrameEvent(
            kind=kind,
            path=self.path,
            relative_path=self.relative,
            ticket=self.ticket,
            frame_index=self.frame_index,
            latency_s=time.monotonic() - self.detected,
            stage_s=stage_s,
            material=self.material,
            sha256="" if self.sha256 == EMPTY_SHA256 else self.sha256,
            model_id=None if self.model is None else self.model.model_id,
            threshold=None if seg is None else seg.threshold,
            n_particles=None if seg is None else seg.n_particles,
            frame_id=self.frame_id,
            seq=self.seq,
            error=None if self.error is None else shown_path(self.error),
        )


class Stage(Protocol):
    """A per-frame stage: fills its fields of ``work``, or sets ``work.error``.

    Runs on a pool of threads, frames in parallel, unless it is a sink (then
    on the recorder, one frame at a time, in arrival order).
    """

    def __call__(self, work: FrameWork) -> None: ...


class Sink(Stage, Protocol):
    """A stage on the recorder thread, which also sees failed frames (to record them).

    ``open`` runs on the recorder thread before the first frame, ``close``
    after the last; ``event`` is emitted after the sink handled a frame.
    """

    event: EventKind | None

    def open(self) -> None: ...

    def close(self) -> None: ...
