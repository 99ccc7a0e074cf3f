"""Sink *publish*: the frame's mask message on the ZeroMQ stream, or its error.

Reads the recorded frame (``frame_id`` included); sends a ``temseg.mask.<material>``
message with the header of ``docs/protocol.md`` (the mask as PackBits when
``encoded_mask`` is there, else raw; the float16 probability when
``send_probability``), or ``temseg.error`` for a failed frame. The socket is
made by :meth:`PublishSink.open` on the recorder thread, its only user;
:attr:`bound_url` is known from then on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temseg.daemon.events import EventKind
from temseg.daemon.faults import FaultPoints
from temseg.daemon.rules import shown_path
from temseg.daemon.work import FrameWork
from temseg.options import MaskEncoding

if TYPE_CHECKING:
    from temseg.stream.outlet import Outlet


class PublishSink:
    """See the module docstring; the arguments are :class:`~temseg.stream.Publisher`'s."""

    event: EventKind | None = None  # the recorder emits "published" or "failed" after it

    def __init__(
        self,
        url: str,
        *,
        send_hwm: int,
        max_peers: int,
        encoding: MaskEncoding,
        send_probability: bool,
        curve_keys: Path | None,
        faults: FaultPoints,
    ) -> None:
        self._options: dict[str, Any] = {
            "send_hwm": send_hwm,
            "max_peers": max_peers,
            "encoding": encoding,
            "send_probability": send_probability,
            "curve_keys": curve_keys,
        }
        self._url = url
        self._faults = faults
        self._publisher: Any = None
        self.bound_url: str | None = None

    def open(self) -> None:
        from temseg.stream import Publisher

        self._publisher = Publisher(self._url, **self._options)
        self.bound_url = self._publisher.bound_url

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()

    @property
    def outlet(self) -> Outlet | None:
        """The publishing socket's thread once open (its connection counts)."""
        return None if self._publisher is None else self._publisher.outlet

    def next_seq(self) -> int:
        """The sequence number the next message gets."""
        return int(self._publisher.seq) + 1

    def __call__(self, work: FrameWork) -> None:
        seg = work.segmentation
        if seg is None or work.error is not None:
            self._publisher.publish_error(
                work.source or shown_path(work.path),
                shown_path(work.error or "unknown error"),
                frame_index=work.frame_index if work.n_frames > 1 else None,
            )
        else:
            # 0/1 by construction: as booleans the encoder needs no range check of its values.
            mask = work.encoded_mask or seg.mask.view(bool)
            self._publisher.publish_mask(header(work), mask, work.probability)
        self._faults.reached("publish")


def header(work: FrameWork) -> dict[str, Any]:
    """The mask message's header fields for a segmented, recorded frame (docs/protocol.md)."""
    seg, model, frame = work.segmentation, work.model, work.frame
    assert seg is not None and model is not None and frame is not None
    read_ms, infer_ms, segment_ms = work.read_s * 1e3, work.infer_s * 1e3, work.segment_s * 1e3
    preview = {} if work.preview is None else {"preview": work.preview}
    return {
        "frame_id": work.frame_id,
        "source": work.source or shown_path(work.path),
        "relative_path": shown_path(work.relative),
        "sha256": work.sha256,
        "frame_index": work.frame_index,
        "n_frames": work.n_frames,
        "material": work.material,
        "model_id": model.model_id,
        "model_source": model.source,
        "backend": model.engine.name,
        "threshold": seg.threshold,
        "threshold_source": work.threshold_source,
        "n_particles": seg.n_particles,
        "area_fraction": seg.area_fraction,
        "pixel_nm": frame.pixel_nm,
        "pixel_nm_yx": None if frame.pixel_nm_yx is None else list(frame.pixel_nm_yx),
        "particles": [p.to_dict() for p in seg.particles],
        "timing_ms": {
            "read": round(read_ms, 3),
            "infer": round(infer_ms, 3),
            "segment": round(segment_ms, 3),
            "total": round(read_ms + infer_ms + segment_ms, 3),
        },
        "latency_ms": round(work.latency_s * 1e3, 3),
        "acquired_at": None if work.mtime is None else _iso_utc(work.mtime),
        "received_at": work.received_at.isoformat(),
        **preview,
    }


def _iso_utc(posix_s: float) -> str:
    return datetime.fromtimestamp(posix_s, UTC).isoformat()
