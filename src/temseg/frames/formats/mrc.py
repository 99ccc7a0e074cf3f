"""MRC frames (MRC2014 and older): single images, image stacks and volumes, plane by plane.

The header is interpreted by mrcfile (BSD); the pixels are a read-only view
into the bytes already read, so nothing is copied. Pixel size comes from the
header (cell size over sampling, Angstrom); when the header has none (zero or
negative, as Direct Electron's cameras write), from a Direct Electron
``PREFIX_info.txt`` next to the file (``Specimen Pixel Size X/Y
(nanometers)``), for a file named ``PREFIX_KIND.mrc`` or ``PREFIX.mrc``.
Signed 8-bit data (mode 0) is widened to int16 and half floats (mode 12) to
float32; complex modes are refused.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from temseg.frames.formats.common import check_extent, check_size
from temseg.frames.frame import Frame, FrameError, why
from temseg.frames.units import pixel_yx

HEADER_BYTES = 1024
MAX_INFO_BYTES = 1 << 20
_INFO_LINE = re.compile(r"^\s*(?P<key>[^=]+?)\s*=\s*(?P<value>.*?)\s*$")


def decode(path: Path, data: bytes | bytearray, max_pixels: int) -> list[Frame]:
    import mrcfile.utils
    from mrcfile.mrcinterpreter import MrcInterpreter

    if len(data) < HEADER_BYTES:
        check_extent(path, len(data), HEADER_BYTES)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # permissive: odd headers warn; what matters is checked below
        mrc = MrcInterpreter(io.BytesIO(data[:HEADER_BYTES]), permissive=True, header_only=True)
    header = mrc.header
    mode = int(header.mode)
    if mode in (3, 4):
        raise FrameError(f"{path}: complex MRC data (mode {mode}) is not an image to segment")
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
        shape = tuple(int(n) for n in mrcfile.utils.data_shape_from_header(header))
    except ValueError as exc:
        raise FrameError(f"{path}: unsupported MRC header ({why(exc)})") from exc
    height, width = shape[-2], shape[-1]
    check_size(path, height, width, max_pixels)
    offset = HEADER_BYTES + int(header.nsymbt)
    count = int(np.prod(shape))
    check_extent(path, len(data), offset + count * dtype.itemsize)
    stack = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(-1, height, width)
    if dtype == np.int8:
        stack = stack.astype(np.int16)
    elif dtype == np.float16:
        stack = stack.astype(np.float32)

    metadata: dict[str, Any] = {"format": "mrc", "mrc_mode": mode}
    pixel = _header_pixel_nm(header)
    if pixel is not None:
        metadata["pixel_nm_source"] = "mrc header"
    else:
        info = _de_info(path)
        pixel = pixel_yx(
            info.get("Specimen Pixel Size Y (nanometers)"),
            info.get("Specimen Pixel Size X (nanometers)"),
            "nm",
            "nm",
        )
        if pixel is not None:
            metadata["pixel_nm_source"] = "de info"
        if info.get("Timestamp (seconds since Epoch)"):
            metadata["acquired"] = info["Timestamp (seconds since Epoch)"]
    return [Frame(image=plane, pixel_nm_yx=pixel, metadata=dict(metadata)) for plane in stack]


def _header_pixel_nm(header: Any) -> tuple[float, float] | None:
    my, mx = int(header.my), int(header.mx)
    if my <= 0 or mx <= 0:
        return None
    cella = header.cella
    return pixel_yx(float(cella.y) / my, float(cella.x) / mx, "A", "A")


def _de_info(path: Path) -> dict[str, str]:
    """``key = value`` lines of a Direct Electron info file next to ``path``; {} when none."""
    stem = path.stem
    candidates = [path.with_name(stem + "_info.txt")]
    if "_" in stem:
        candidates.insert(0, path.with_name(stem.rsplit("_", 1)[0] + "_info.txt"))
    for info in candidates:
        if info.is_file():
            try:
                with info.open("rb") as fh:
                    text = fh.read(MAX_INFO_BYTES).decode("utf-8", errors="replace")
            except OSError:
                return {}
            found = {}
            for line in text.splitlines():
                match = _INFO_LINE.match(line)
                if match:
                    found[match["key"]] = match["value"]
            return found
    return {}
