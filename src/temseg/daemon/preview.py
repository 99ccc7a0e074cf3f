"""Stage *preview* (setting ``send_preview_px`` > 0): a small PNG of the frame for the stream.

Runs on the segmenters after the frame is segmented; fills ``preview``, which
the publish sink puts in the mask message's header
(:mod:`temseg.stream.preview`, ``docs/protocol.md``).
"""

from __future__ import annotations

from temseg.daemon.work import FrameWork
from temseg.stream.preview import frame_preview


class PreviewStage:
    """See the module docstring; ``max_px`` is the preview's longest side, pixels."""

    def __init__(self, max_px: int) -> None:
        self._max_px = max_px

    def __call__(self, work: FrameWork) -> None:
        if work.frame is not None:
            work.preview = frame_preview(work.frame.image, self._max_px)
