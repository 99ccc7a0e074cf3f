"""Checks and helpers shared by the readers."""

from __future__ import annotations

from pathlib import Path

from temseg.frames.frame import FrameError, IncompleteFrameError


def check_size(path: Path, height: int, width: int, max_pixels: int) -> None:
    """Refuse an image with no pixels or more than ``max_pixels``, before decoding it."""
    if height <= 0 or width <= 0:
        raise FrameError(f"{path}: image has no pixels ({height} x {width})")
    if height * width > max_pixels:
        raise FrameError(
            f"{path}: image of {height} x {width} pixels exceeds the limit of {max_pixels} pixels"
        )


def check_extent(path: Path, data_size: int, end: int) -> None:
    """Raise :class:`IncompleteFrameError` when bytes up to ``end`` are not all there."""
    if end > data_size:
        raise IncompleteFrameError(
            f"{path}: truncated file ({data_size} bytes; image data ends at byte {end})"
        )
