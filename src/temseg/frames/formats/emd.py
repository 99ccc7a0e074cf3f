"""HDF5 frames: Thermo Fisher Velox EMD and Berkeley EMD, read with h5py from memory.

Velox: every ``/Data/Image/<id>`` dataset is an image signal of shape
(rows, cols, frames) with a JSON ``Metadata`` column per frame (pixel size
``BinaryResult.PixelSize`` with ``PixelUnitX/Y``, ``Optics`` voltage and
magnification, acquisition time). Signals are taken in the order of their
names, frames in stored order; complex signals (e.g. DPC), spectra and
spectrum images are skipped.

Berkeley EMD: every group with ``emd_group_type == 1`` holds ``data`` and
``dim1`` .. ``dimN``; the two axes whose ``units`` are lengths are the image
(the last two when none are), the pixel size is the step of those axes, and
any other axis counts frames.

An HDF5 file shorter than the end-of-file address in its superblock, or one
h5py cannot open or read, is taken as still being written
(:class:`~temseg.frames.frame.IncompleteFrameError`).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from temseg.frames.formats.common import check_size
from temseg.frames.frame import Frame, FrameError, IncompleteFrameError, why
from temseg.frames.units import nm_per_unit, pixel_yx


def decode(path: Path, data: bytes | bytearray, max_pixels: int) -> list[Frame]:
    try:
        import h5py
    except ImportError as exc:
        raise FrameError(f"{path}: reading HDF5/EMD files needs h5py: pip install h5py") from exc
    _check_eof(path, data)
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            if "Data" in f and isinstance(f["Data"], h5py.Group):
                return _velox(path, f, max_pixels)
            return _berkeley(path, f, max_pixels)
    except OSError as exc:
        raise IncompleteFrameError(
            f"{path}: HDF5 file cannot be read yet (still being written?) ({why(exc)})"
        ) from exc


def _check_eof(path: Path, data: bytes | bytearray) -> None:
    """IncompleteFrameError when the superblock's end-of-file address lies past the data."""
    version = data[8] if len(data) > 8 else None
    if version in (0, 1):
        size_of_offsets = data[13]
        eof_at = 24 + (4 if version == 1 else 0) + 2 * size_of_offsets
    elif version in (2, 3):
        size_of_offsets = data[9]
        eof_at = 12 + 2 * size_of_offsets
    else:
        return
    fmt = {4: "<I", 8: "<Q"}.get(size_of_offsets)
    if fmt is None or len(data) < eof_at + size_of_offsets:
        raise IncompleteFrameError(f"{path}: HDF5 superblock incomplete (still being written?)")
    (eof,) = struct.unpack_from(fmt, data, eof_at)
    if eof > len(data):
        raise IncompleteFrameError(
            f"{path}: truncated HDF5 file ({len(data)} bytes of {eof}; still being written?)"
        )


def _velox(path: Path, f: Any, max_pixels: int) -> list[Frame]:
    import h5py

    frames: list[Frame] = []
    images = f["Data"].get("Image")
    if not isinstance(images, h5py.Group):
        return frames
    for name in sorted(images):
        group = images[name]
        dataset = group.get("Data") if isinstance(group, h5py.Group) else None
        if not isinstance(dataset, h5py.Dataset) or dataset.ndim not in (2, 3):
            continue
        if dataset.dtype.kind not in "iuf":  # complex signals are compound types
            continue
        height, width = int(dataset.shape[0]), int(dataset.shape[1])
        check_size(path, height, width, max_pixels)
        stack = dataset[()]
        stack = stack[:, :, None] if stack.ndim == 2 else stack
        columns = _velox_metadata(group)
        # frames stay views of the one copy h5py made: a contiguous copy per frame cost as
        # much again as reading them
        for k in range(stack.shape[2]):
            image = stack[:, :, k]
            meta = columns[min(k, len(columns) - 1)] if columns else {}
            pixel, metadata = _velox_facts(meta)
            metadata["dataset"] = f"/Data/Image/{name}"
            frames.append(Frame(image=image, pixel_nm_yx=pixel, metadata=metadata))
    return frames


def _velox_metadata(group: Any) -> list[dict[str, Any]]:
    raw = group.get("Metadata")
    if raw is None or raw.ndim != 2:
        return []
    table = np.asarray(raw[()], dtype=np.uint8)
    out = []
    for column in table.T:
        text = column.tobytes().split(b"\0", 1)[0].decode("utf-8", errors="replace")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = {}
        out.append(value if isinstance(value, dict) else {})
    return out


def _velox_facts(meta: dict[str, Any]) -> tuple[tuple[float, float] | None, dict[str, Any]]:
    found: dict[str, Any] = {"format": "velox emd"}
    result = meta.get("BinaryResult") or {}
    size = result.get("PixelSize") or {}
    pixel = pixel_yx(
        _number(size.get("height")),
        _number(size.get("width")),
        result.get("PixelUnitY"),
        result.get("PixelUnitX"),
    )
    if pixel is not None:
        found["pixel_nm_source"] = "velox"
    if result.get("Detector"):
        found["detector"] = str(result["Detector"])
    optics = meta.get("Optics") or {}
    volts = _number(optics.get("AccelerationVoltage"))
    if volts:
        found["voltage_kv"] = volts / 1e3
    magnification = _number(optics.get("NominalMagnification"))
    if magnification:
        found["magnification"] = magnification
    when = _number(
        ((meta.get("Acquisition") or {}).get("AcquisitionStartDatetime") or {}).get("DateTime")
    )
    if when:
        found["acquired"] = dt.datetime.fromtimestamp(when, tz=dt.UTC).isoformat()
    return pixel, found


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _berkeley(path: Path, f: Any, max_pixels: int) -> list[Frame]:
    import h5py

    groups: list[tuple[str, Any]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and int(np.asarray(obj.attrs.get("emd_group_type", 0))) == 1:
            groups.append((name, obj))

    f.visititems(visit)
    voltage = _number(_text(f["microscope"].attrs.get("voltage"))) if "microscope" in f else None
    frames: list[Frame] = []
    for name, group in groups:
        dataset = group.get("data")
        if (
            not isinstance(dataset, h5py.Dataset)
            or dataset.ndim < 2
            or dataset.dtype.kind not in "iuf"
        ):
            continue
        dims = [group.get(f"dim{i + 1}") for i in range(dataset.ndim)]
        units = [_text(d.attrs.get("units")) if isinstance(d, h5py.Dataset) else None for d in dims]
        lengths = [i for i, u in enumerate(units) if nm_per_unit(u) is not None]
        image_axes = lengths[-2:] if len(lengths) >= 2 else [dataset.ndim - 2, dataset.ndim - 1]
        height, width = (int(dataset.shape[a]) for a in image_axes)
        check_size(path, height, width, max_pixels)
        stack = np.moveaxis(dataset[()], image_axes, [-2, -1]).reshape(-1, height, width)
        steps = [_step(dims[a]) for a in image_axes]
        pixel = pixel_yx(steps[0], steps[1], units[image_axes[0]], units[image_axes[1]])
        metadata: dict[str, Any] = {"format": "berkeley emd", "dataset": f"/{name}/data"}
        if pixel is not None:
            metadata["pixel_nm_source"] = "emd dims"
        if voltage:
            metadata["voltage_kv"] = voltage
        for image in np.ascontiguousarray(stack):
            frames.append(Frame(image=image, pixel_nm_yx=pixel, metadata=dict(metadata)))
    return frames


def _step(dim: Any) -> float | None:
    if dim is None or dim.ndim != 1 or dim.shape[0] < 2:
        return None
    values = dim[:2]
    return _number(abs(float(values[1]) - float(values[0])))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)
