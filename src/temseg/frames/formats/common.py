"""Checks and helpers shared by the readers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO, cast

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


class _BufferReader(io.RawIOBase):
    """A read-only, seekable file over a buffer, copying only what is read from it."""

    def __init__(self, data: bytearray) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), len(self._view) - self._pos))
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._view.release()
        super().close()


def file_over(data: bytes | bytearray) -> BinaryIO:
    """A binary file reading ``data`` in place: ``io.BytesIO`` shares a ``bytes``
    object's memory, but copies a ``bytearray`` whole, which for a frame costs
    more than reading the file did."""
    if isinstance(data, bytes):
        return io.BytesIO(data)
    return cast(BinaryIO, _BufferReader(data))  # the calls a binary file reader makes
