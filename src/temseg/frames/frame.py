"""The frame every reader returns, and the error every reader raises."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_BYTES_REPR = re.compile(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def why(exc: BaseException, limit: int = 160) -> str:
    """The reason in ``exc`` without any of the file's bytes, for a :class:`FrameError`.

    Readers quote what they found (tifffile: ``header=b'root'``), which for a
    file that is not a frame is someone else's data. Quoted bytes become
    ``b'...'``; the text is printable ASCII and at most ``limit`` characters.
    """
    text = _BYTES_REPR.sub("b'...'", str(exc))
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FrameError(ValueError):
    """A frame file cannot be used; the message names the file and the problem."""


class IncompleteFrameError(FrameError):
    """The file ends before its own header says it should: still being written.

    Writers that fill a file in place (Velox, Digital Micrograph, HDF5 in
    general) leave it in this state for a while; callers that watch a folder
    read it again later instead of failing it.
    """


@dataclass
class Frame:
    """One grayscale 2-D frame of a file, with its pixel size and metadata.

    ``image`` is 2-D with the sample type stored in the file. ``pixel_nm_yx``
    is the pixel size in nm along y (rows) and x (columns), None when the file
    does not say; ``pixel_nm`` is the side of the square pixel of equal area
    (``sqrt(y * x)``, the pixel size itself when pixels are square), so areas
    in nm^2 come out right. Give either; both must agree. ``metadata`` holds
    the source metadata worth keeping (``format``, ``voltage_kv``,
    ``magnification``, ``acquired``, sidecar keys, ...). A file with several
    frames (a stack, a movie, several detectors) gives one Frame per 2-D
    image with ``frame_index`` 0 .. ``n_frames - 1`` in file order.
    ``read_ms`` is this frame's share of the time spent reading the file (ms).
    """

    image: np.ndarray
    pixel_nm: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    read_ms: float = 0.0
    pixel_nm_yx: tuple[float, float] | None = None
    frame_index: int = 0
    n_frames: int = 1

    def __post_init__(self) -> None:
        if self.pixel_nm_yx is None:
            if self.pixel_nm is not None:
                self.pixel_nm = float(self.pixel_nm)
                self.pixel_nm_yx = (self.pixel_nm, self.pixel_nm)
            return
        y, x = (float(v) for v in self.pixel_nm_yx)
        self.pixel_nm_yx = (y, x)
        area_side = y if y == x else math.sqrt(y * x)
        if self.pixel_nm is None:
            self.pixel_nm = area_side
        elif not math.isclose(float(self.pixel_nm), area_side, rel_tol=1e-9):
            raise ValueError(
                f"pixel_nm {self.pixel_nm} disagrees with pixel_nm_yx {self.pixel_nm_yx}; "
                "give one of them"
            )

    @property
    def material(self) -> str | None:
        value = self.metadata.get("material")
        return None if value is None else str(value)
