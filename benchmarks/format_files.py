"""Write a 2-D image in each microscope format temseg reads, as bytes (for benchmarks and tests).

TIFF with tifffile, MRC with mrcfile, EMD (Velox and Berkeley layouts) with
h5py; DM3/DM4 and SER have no permissive writer, so they are written here
after their published layouts (the same ones ``temseg.frames.formats.dm``
and ``.ser`` read): an image entry preceded by an RGB thumbnail for DM, a
series of one image for SER. Pixel sizes are given in nm.
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import tifffile


def tiff_bytes(image: np.ndarray, pixel_nm: float) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, metadata={"pixel_nm": pixel_nm})
    return buffer.getvalue()


def mrc_bytes(image: np.ndarray, pixel_nm: float) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(image)
            mrc.voxel_size = pixel_nm * 10.0  # Angstrom
        return path.read_bytes()


def _hdf5_bytes(fill: Callable[[h5py.File], None]) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    return buffer.getvalue()


def velox_bytes(image: np.ndarray, pixel_nm: float) -> bytes:
    meta = {
        "BinaryResult": {
            "PixelSize": {"width": repr(pixel_nm * 1e-9), "height": repr(pixel_nm * 1e-9)},
            "PixelUnitX": "m",
            "PixelUnitY": "m",
        },
        "Optics": {"AccelerationVoltage": "300000"},
    }
    text = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    column = np.zeros((60000, 1), np.uint8)
    column[: len(text), 0] = text

    def fill(f: h5py.File) -> None:
        version = json.dumps({"version": "8", "format": "Velox"})
        f.create_dataset("Version", data=[version.encode()], dtype=h5py.string_dtype())
        group = f.create_group("Data/Image/0")
        group["Data"] = image[:, :, None]
        group["Metadata"] = column

    return _hdf5_bytes(fill)


def berkeley_bytes(image: np.ndarray, pixel_nm: float) -> bytes:
    def fill(f: h5py.File) -> None:
        f.attrs["version_major"], f.attrs["version_minor"] = 0, 2
        group = f.create_group("data/image")
        group.attrs["emd_group_type"] = 1
        group["data"] = image
        for i, n in enumerate(image.shape, start=1):
            group[f"dim{i}"] = np.arange(n) * pixel_nm
            group[f"dim{i}"].attrs["units"] = "[n_m]"

    return _hdf5_bytes(fill)


# --- DM3 / DM4 -------------------------------------------------------------------------------

_DM_TYPES = {"i2": 2, "i4": 3, "u2": 4, "u4": 5, "f4": 6, "f8": 7, "i1": 9, "u1": 10}
_DM_DATA_TYPES = {"i2": 1, "f4": 2, "u1": 6, "i4": 7, "u2": 10, "u4": 11, "f8": 12}


def _dm_count(value: int, version: int) -> bytes:
    return struct.pack(">Q" if version == 4 else ">I", value)


def _dm_group(entries: list[tuple[str, object]], version: int) -> bytes:
    out = b"\0\1" + _dm_count(len(entries), version)
    for label, value in entries:
        name = label.encode("latin-1")
        if isinstance(value, list):
            kind, body = 20, _dm_group(value, version)
        else:
            kind, body = 21, _dm_data(value, version)
        out += struct.pack(">BH", kind, len(name)) + name
        if version == 4:
            out += struct.pack(">Q", len(body))
        out += body
    return out


def _dm_data(value: object, version: int) -> bytes:
    if isinstance(value, str):  # a UTF-16 string: array of uint16
        value = np.frombuffer(value.encode("utf-16-le"), "<u2")
    if isinstance(value, np.ndarray):
        code = _DM_TYPES[value.dtype.str[1:]]
        info = [20, code, value.size]
        payload = value.astype(value.dtype.newbyteorder("<")).tobytes()
    else:
        array = np.asarray(value)
        code = _DM_TYPES[array.dtype.str[1:]]
        info = [code]
        payload = array.astype(array.dtype.newbyteorder("<")).tobytes()
    head = b"%%%%" + _dm_count(len(info), version)
    return head + b"".join(_dm_count(i, version) for i in info) + payload


def dm_bytes(image: np.ndarray, pixel_nm: float, version: int = 4) -> bytes:
    height, width = image.shape
    thumbnail = [
        ("ImageData", [
            ("Data", np.zeros(16 * 16, "<u4")),
            ("DataType", np.int32(23)),
            ("Dimensions", [("", np.uint32(16)), ("", np.uint32(16))]),
        ]),
    ]  # fmt: skip
    calibration = [("Origin", np.float32(0)), ("Scale", np.float32(pixel_nm)), ("Units", "nm")]
    entry = [
        ("ImageData", [
            ("Calibrations", [("Dimension", [("", calibration), ("", calibration)])]),
            ("Data", np.ascontiguousarray(image).ravel()),
            ("DataType", np.int32(_DM_DATA_TYPES[image.dtype.str[1:]])),
            ("Dimensions", [("", np.uint32(width)), ("", np.uint32(height))]),
        ]),
        ("ImageTags", [("Microscope Info", [("Voltage", np.float64(300000.0))])]),
        ("Name", "bench"),
    ]  # fmt: skip
    root = _dm_group([("ImageList", [("", thumbnail), ("", entry)])], version)
    header_size = 16 if version == 4 else 12
    size = header_size + len(root)
    header = struct.pack(">I", version) + _dm_count(size, version) + struct.pack(">I", 1)
    return header + root


# --- SER -------------------------------------------------------------------------------------

_SER_TYPES = {"u1": 1, "u2": 2, "u4": 3, "i1": 4, "i2": 5, "i4": 6, "f4": 7, "f8": 8}


def ser_bytes(image: np.ndarray, pixel_nm: float) -> bytes:
    height, width = image.shape
    delta = pixel_nm * 1e-9
    code = _SER_TYPES[image.dtype.str[1:]]
    head = struct.pack("<ddiddihii", 0.0, delta, 0, 0.0, delta, 0, code, width, height)
    element = (
        head + np.ascontiguousarray(image[::-1]).astype(image.dtype.newbyteorder("<")).tobytes()
    )
    header = struct.pack("<HHHiiii", 0x4949, 0x0197, 0x0220, 0x4122, 0x4152, 1, 1)
    dims = struct.pack("<i", 1) + struct.pack("<iddii", 1, 0.0, 1.0, 0, 0) + struct.pack("<i", 0)
    array_at = len(header) + 8 + len(dims)
    offsets = struct.pack("<qq", array_at + 16, 0)
    return header + struct.pack("<q", array_at) + dims + offsets + element


WRITERS: dict[str, tuple[str, Callable[[np.ndarray, float], bytes]]] = {
    "tiff": (".tif", tiff_bytes),
    "mrc": (".mrc", mrc_bytes),
    "velox emd": (".emd", velox_bytes),
    "berkeley emd": (".emd", berkeley_bytes),
    "dm3": (".dm3", lambda image, pixel: dm_bytes(image, pixel, version=3)),
    "dm4": (".dm4", lambda image, pixel: dm_bytes(image, pixel, version=4)),
    "ser": (".ser", ser_bytes),
}
"""Format name -> (file suffix, writer of ``(image, pixel_nm)`` to bytes)."""
