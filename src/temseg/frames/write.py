"""Writing frames, masks and JSON sidecars, atomically.

Frames: ``tifffile.imwrite`` with ``metadata=`` so the ImageDescription
holds JSON with a ``pixel_nm`` key (nm per pixel) plus any other metadata
(e.g. ``material``), and resolution tags in pixels per centimetre
(``1e7 / pixel_nm``, unit CENTIMETER). Masks: uint8 0/1, zlib-compressed.

Every file is written to ``NAME.part`` in the destination folder and then
renamed over ``NAME`` with ``os.replace``, so a watcher never sees a
half-written file under its final name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tuples and paths turned into JSON types."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Run ``write(tmp)`` on ``PATH.part`` next to ``path``, then rename it to ``path``."""
    final = Path(path)
    tmp = final.with_name(final.name + ".part")
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def write_frame_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    pixel_nm: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a 2-D frame as TIFF with JSON metadata and, given ``pixel_nm``, resolution tags."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"a frame must be 2-D, got shape {image.shape}")
    description = to_jsonable(dict(metadata or {}))
    kwargs: dict[str, Any] = {}
    if pixel_nm is not None:
        if not pixel_nm > 0:
            raise ValueError(f"pixel_nm must be > 0, got {pixel_nm}")
        description["pixel_nm"] = float(pixel_nm)
        kwargs = {"resolution": (1e7 / pixel_nm, 1e7 / pixel_nm), "resolutionunit": "CENTIMETER"}

    def write(tmp: Path) -> None:
        tifffile.imwrite(tmp, image, metadata=description, **kwargs)

    return _atomic_write(path, write)


def write_mask_tiff(
    path: str | os.PathLike[str], mask: np.ndarray, *, compress: bool = True
) -> Path:
    """Write a uint8 0/1 mask as TIFF (zlib-compressed unless ``compress=False``)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(f"a mask holds only 0 and 1, got values {mask.min()}..{mask.max()}")
    data = mask.astype(np.uint8)

    def write(tmp: Path) -> None:
        tifffile.imwrite(tmp, data, compression="zlib" if compress else None)

    return _atomic_write(path, write)


def write_probability_tiff(path: str | os.PathLike[str], probability: np.ndarray) -> Path:
    """Write a 2-D probability map (particle, 0..1) as float32 TIFF (zlib-compressed)."""
    data = np.asarray(probability, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"a probability map must be 2-D, got shape {data.shape}")

    def write(tmp: Path) -> None:
        tifffile.imwrite(tmp, data, compression="zlib")

    return _atomic_write(path, write)


def write_sidecar(path: str | os.PathLike[str], metadata: dict[str, Any]) -> Path:
    """Write ``metadata`` as JSON to ``NAME.json`` (``path`` is the frame or the .json path)."""
    target = Path(path)
    if target.suffix.lower() != ".json":
        target = target.with_suffix(".json")
    text = json.dumps(to_jsonable(metadata), indent=2, allow_nan=False) + "\n"
    return _atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
