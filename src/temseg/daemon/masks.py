"""Sink *masks*: the mask as a TIFF file under the ``masks`` folder, when that is set.

Reads ``work.segmentation`` and ``work.relative``; fills ``mask_path`` (the
same relative path below the masks folder, suffix ``.tif``). Runs on the
segmenters, frames in parallel, right after segmentation. A mask that
cannot be written is logged and leaves ``mask_path`` None; the frame is
still recorded and published.
"""

from __future__ import annotations

import logging
from pathlib import Path

from temseg.daemon.rules import mask_path
from temseg.daemon.work import FrameWork

logger = logging.getLogger("temseg.daemon")


class MaskSink:
    """See the module docstring; ``root`` is the masks folder (never inside the watched one)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def __call__(self, work: FrameWork) -> None:
        from temseg.frames.write import write_mask_tiff

        if work.segmentation is None:
            return
        target = mask_path(self._root, work.relative)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_mask_tiff(target, work.segmentation.mask, compress=True)
        except OSError as exc:
            logger.error("mask not written path=%s error=%s", target, exc)
            return
        work.mask_path = target
