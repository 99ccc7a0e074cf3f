"""FEI TIA SER frames, parsed from memory; metadata from the EMI file of the pair.

TIA saves an acquisition as ``NAME.emi`` (instrument metadata as XML, no
pixels needed) and ``NAME_1.ser``, ``NAME_2.ser``, ... (the data series). The
``.ser`` file is the frame: it holds the pixels and their calibration, so it
alone is hashed and decoded. The ``.emi`` is read, when present, like a
sidecar for voltage, magnification and acquisition date; a missing or odd
``.emi`` costs only that metadata.

SER layout (little endian): byte order ``II``, series id 0x0197, version
(0x0210: 4-byte offsets, 0x0220: 8-byte), data type (0x4122 images, 0x4120
spectra), tag type, total and valid element counts, offset of the offset
arrays, number of dimensions and their descriptions; then per element an
offset. A 2-D element is calibration x (offset, delta in metres, element),
calibration y, data type (1 uint8, 2 uint16, 3 uint32, 4 int8, 5 int16,
6 int32, 7 float32, 8 float64, 9/10 complex), size x, size y and the
pixels, x fastest, bottom row first. Every valid element is a frame.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from temseg.frames.formats.common import check_extent, check_size
from temseg.frames.frame import Frame, FrameError
from temseg.frames.units import pixel_yx

IMAGES = 0x4122
SPECTRA = 0x4120
_DTYPES = {1: "<u1", 2: "<u2", 3: "<u4", 4: "<i1", 5: "<i2", 6: "<i4", 7: "<f4", 8: "<f8"}
_ELEMENT_HEADER = struct.Struct("<ddiddihii")  # calibration x, calibration y, type, sizes
MAX_EMI_BYTES = 16 << 20


def decode(path: Path, data: bytes | bytearray, max_pixels: int) -> list[Frame]:
    check_extent(path, len(data), 30)
    _, _, version, kind, _, _, valid = struct.unpack_from("<HHHiiii", data, 0)
    wide = version >= 0x220
    offset_fmt = "<q" if wide else "<i"
    (array_at,) = struct.unpack_from(offset_fmt, data, 22)
    if kind == SPECTRA:
        raise FrameError(f"{path}: SER file holds spectra, no 2-D image (nothing to segment)")
    if kind != IMAGES:
        raise FrameError(f"{path}: unknown SER data type 0x{kind:04x}")
    step = 8 if wide else 4
    check_extent(path, len(data), array_at + valid * step)
    offsets = np.frombuffer(data, offset_fmt, valid, array_at)
    metadata = {"format": "ser", **_emi_metadata(path)}
    frames = []
    for start in (int(o) for o in offsets):
        check_extent(path, len(data), start + _ELEMENT_HEADER.size)
        _, dx, _, _, dy, _, code, width, height = _ELEMENT_HEADER.unpack_from(data, start)
        if code not in _DTYPES:
            raise FrameError(f"{path}: unsupported SER data type {code} (complex or unknown)")
        check_size(path, height, width, max_pixels)
        dtype = np.dtype(_DTYPES[code])
        begin = start + _ELEMENT_HEADER.size
        check_extent(path, len(data), begin + width * height * dtype.itemsize)
        # rows are stored bottom row first (TIA's y axis points up): a flipped view
        image = np.frombuffer(data, dtype, width * height, begin).reshape(height, width)[::-1]
        if dtype == np.int8:
            image = image.astype(np.int16)
        pixel = pixel_yx(dy, dx, "m", "m")
        found = dict(metadata)
        if pixel is not None:
            found["pixel_nm_source"] = "ser calibration"
        frames.append(Frame(image=image, pixel_nm_yx=pixel, metadata=found))
    return frames


def emi_path(path: Path) -> Path:
    """The ``.emi`` of a ``NAME_N.ser`` file: ``NAME.emi`` in the same folder."""
    stem = path.stem
    base = stem.rsplit("_", 1)[0] if re.search(r"_\d+$", stem) else stem
    return path.with_name(base + ".emi")


def _emi_metadata(path: Path) -> dict[str, Any]:
    emi = emi_path(path)
    try:
        with emi.open("rb") as fh:
            raw = fh.read(MAX_EMI_BYTES)
    except OSError:
        return {}
    text = raw.decode("latin-1")
    found: dict[str, Any] = {"emi": emi.name}
    volts = _xml_number(text, "AcceleratingVoltage")
    if volts:
        found["voltage_kv"] = volts / 1e3
    magnification = _xml_number(text, "Magnification")
    if magnification:
        found["magnification"] = magnification
    date = re.search(r"<AcquireDate>([^<]*)</AcquireDate>", text)
    if date:
        found["acquired"] = date.group(1).strip()
    return found


def _xml_number(text: str, tag: str) -> float | None:
    match = re.search(rf"<{tag}>\s*([-+0-9.eE]+)", text)
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None
