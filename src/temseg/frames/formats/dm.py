"""Gatan Digital Micrograph DM3 and DM4 frames, parsed from memory.

Both versions hold one tree of tags. The header is the version (3 or 4),
the file size and the byte order of the data (1: little endian); tag
structure fields are big endian, 4 bytes wide in DM3 and 8 in DM4. A group
is (sorted, open, count) followed by its tags; a tag is its kind (20: group,
21: data, 0: end), a labelled name, in DM4 its total size, then a group or
``%%%%``, the length of its type description, the description and the
value. Types: 2 int16, 3 int32, 4 uint16, 5 uint32, 6 float32, 7 float64,
8 bool, 9 int8, 10 uint8, 11 int64, 12 uint64, 15 struct, 18 string,
20 array (of a simple type or of structs).

Images are the entries of ``ImageList``: ``ImageData`` holds ``Data`` (an
array, columns fastest), ``Dimensions`` (x, y[, z]) and ``Calibrations.
Dimension`` (x then y: ``Scale`` and ``Units``, a UTF-16 string).
Thumbnails (RGB), complex data and images of fewer than two dimensions are
skipped; a third dimension counts frames. Pixels are read-only views into
the bytes read.
"""

from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path
from typing import Any

import numpy as np

from temseg.frames.formats.common import check_extent, check_size
from temseg.frames.frame import Frame, FrameError
from temseg.frames.units import pixel_yx

_SIMPLE = {
    2: "i2",
    3: "i4",
    4: "u2",
    5: "u4",
    6: "f4",
    7: "f8",
    8: "u1",
    9: "i1",
    10: "u1",
    11: "i8",
    12: "u8",
}
_COLOUR_TYPES = {8, 23}  # RGB and RGBA image data types: thumbnails and overlays
_COMPLEX_TYPES = {3, 5, 13}

Group = list[tuple[str, Any]]


class _Parser:
    def __init__(self, path: Path, data: bytes | bytearray) -> None:
        self.path = path
        self.data = data
        (self.version,) = struct.unpack_from(">I", data, 0)
        self.wide = self.version == 4
        self.count_fmt = ">Q" if self.wide else ">I"
        self.count_size = 8 if self.wide else 4
        header = 16 if self.wide else 12
        check_extent(path, len(data), header + 6)
        (order,) = struct.unpack_from(">I", data, header - 4)
        self.order = "<" if order == 1 else ">"
        self.root_at = header

    def count(self, pos: int) -> tuple[int, int]:
        check_extent(self.path, len(self.data), pos + self.count_size)
        (value,) = struct.unpack_from(self.count_fmt, self.data, pos)
        return int(value), pos + self.count_size

    def group(self, pos: int) -> tuple[Group, int]:
        n, pos = self.count(pos + 2)  # skip the sorted and open flags
        entries: Group = []
        for _ in range(n):
            check_extent(self.path, len(self.data), pos + 3)
            kind = self.data[pos]
            (length,) = struct.unpack_from(">H", self.data, pos + 1)
            label = self.data[pos + 3 : pos + 3 + length].decode("latin-1")
            pos += 3 + length
            if self.wide:
                pos += 8  # the tag's total size
            if kind == 20:
                value, pos = self.group(pos)
            elif kind == 21:
                value, pos = self.tag(pos)
            elif kind == 0:
                break
            else:
                raise FrameError(f"{self.path}: corrupt DM file (tag kind {kind} at byte {pos})")
            entries.append((label, value))
        return entries, pos

    def tag(self, pos: int) -> tuple[Any, int]:
        if self.data[pos : pos + 4] != b"%%%%":
            check_extent(self.path, len(self.data), pos + 4)
            raise FrameError(f"{self.path}: corrupt DM file (no tag marker at byte {pos})")
        n, pos = self.count(pos + 4)
        info = []
        for _ in range(n):
            value, pos = self.count(pos)
            info.append(value)
        if not info:
            raise FrameError(f"{self.path}: corrupt DM file (empty tag type at byte {pos})")
        return self.value(info, pos)

    def dtype(self, code: int) -> np.dtype:
        if code not in _SIMPLE:
            raise FrameError(f"{self.path}: unsupported DM data type {code}")
        return np.dtype(self.order + _SIMPLE[code])

    def value(self, info: list[int], pos: int) -> tuple[Any, int]:
        kind = info[0]
        if kind in _SIMPLE:
            dtype = self.dtype(kind)
            check_extent(self.path, len(self.data), pos + dtype.itemsize)
            return np.frombuffer(self.data, dtype, 1, pos)[0].item(), pos + dtype.itemsize
        if kind == 18:  # string of info[1] bytes
            return self.data[pos : pos + info[1]].decode("latin-1"), pos + info[1]
        if kind == 15:  # struct: 15, name length, n fields, (name length, type) per field
            fields = [self.dtype(t) for t in info[4 : 4 + 2 * info[2] : 2]]
            dtype = np.dtype([(f"f{i}", d) for i, d in enumerate(fields)])
            check_extent(self.path, len(self.data), pos + dtype.itemsize)
            return tuple(np.frombuffer(self.data, dtype, 1, pos)[0].item()), pos + dtype.itemsize
        if kind == 20:  # array: 20, element type, [struct description,] count
            count = info[-1]
            if info[1] == 15:
                fields = [self.dtype(t) for t in info[5 : 5 + 2 * info[3] : 2]]
                dtype = np.dtype([(f"f{i}", d) for i, d in enumerate(fields)])
            else:
                dtype = self.dtype(info[1])
            end = pos + count * dtype.itemsize
            check_extent(self.path, len(self.data), end)
            return np.frombuffer(self.data, dtype, count, pos), end
        raise FrameError(f"{self.path}: unsupported DM tag type {kind}")


def find(group: Any, *names: str) -> Any:
    """The value at ``names`` in a parsed tag tree, or None."""
    for name in names:
        if not isinstance(group, list):
            return None
        group = next((v for label, v in group if label == name), None)
    return group


def text(value: Any) -> str | None:
    """A DM string tag (an array of UTF-16 code units) as str."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "u" and value.itemsize == 2:
        return value.astype("<u2").tobytes().decode("utf-16-le", errors="replace")
    if isinstance(value, str):
        return value
    return None


def decode(path: Path, data: bytes | bytearray, max_pixels: int) -> list[Frame]:
    parser = _Parser(path, data)
    root, _ = parser.group(parser.root_at)
    frames: list[Frame] = []
    entries = find(root, "ImageList")
    for _, entry in entries if isinstance(entries, list) else []:
        image = find(entry, "ImageData")
        pixels = find(image, "Data")
        dims = [v for _, v in find(image, "Dimensions") or []]
        kind = find(image, "DataType")
        if not isinstance(pixels, np.ndarray) or pixels.dtype.names is not None:
            continue
        if kind in _COLOUR_TYPES or kind in _COMPLEX_TYPES or len(dims) < 2:
            continue
        width, height = int(dims[0]), int(dims[1])
        check_size(path, height, width, max_pixels)
        if pixels.size != int(np.prod(dims)) or pixels.size == 0:
            raise FrameError(
                f"{path}: DM image data has {pixels.size} values for dimensions {dims}"
            )
        stack = pixels.reshape(-1, height, width)
        if stack.dtype == np.int8:
            stack = stack.astype(np.int16)
        pixel, metadata = _facts(path, entry, image)
        frames.extend(Frame(image=p, pixel_nm_yx=pixel, metadata=dict(metadata)) for p in stack)
    return frames


def _facts(path: Path, entry: Any, image: Any) -> tuple[tuple[float, float] | None, dict[str, Any]]:
    found: dict[str, Any] = {"format": "dm4" if path.suffix.lower() == ".dm4" else "dm3"}
    calibrations = [v for _, v in find(image, "Calibrations", "Dimension") or []]
    pixel = None
    if len(calibrations) >= 2:
        x, y = calibrations[0], calibrations[1]
        pixel = pixel_yx(
            find(y, "Scale"), find(x, "Scale"), text(find(y, "Units")), text(find(x, "Units"))
        )
    if pixel is not None:
        found["pixel_nm_source"] = "dm calibration"
    info = find(entry, "ImageTags", "Microscope Info")
    volts = find(info, "Voltage")
    if isinstance(volts, int | float) and volts > 0:
        found["voltage_kv"] = float(volts) / 1e3
    for key in ("Indicated Magnification", "Actual Magnification"):
        magnification = find(info, key)
        if isinstance(magnification, int | float) and magnification > 0:
            found["magnification"] = float(magnification)
            break
    bar = find(entry, "ImageTags", "DataBar")
    date, time_ = text(find(bar, "Acquisition Date")), text(find(bar, "Acquisition Time"))
    if date:
        found["acquired"] = f"{date} {time_ or ''}".strip()
    else:
        stamp = find(entry, "ImageTags", "GMS Version", "Created")
        if isinstance(stamp, int | float) and stamp > 0:
            found["acquired"] = dt.datetime.fromtimestamp(stamp, tz=dt.UTC).isoformat()
    name = text(find(entry, "Name"))
    if name:
        found["name"] = name
    return pixel, found
