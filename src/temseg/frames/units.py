"""Length units as microscope software writes them, converted to nm.

One table for every reader: ``nm``, ``um``/``µm``/``micron``, ``pm``,
Angstrom (``A``, ``Å``, ``ang``), ``mm``, ``cm``, ``m``, the long names,
and Berkeley EMD's bracketed names such as ``[n_m]``. Unknown units
(including reciprocal ones like ``1/nm`` of a diffraction pattern and the
empty unit of an uncalibrated image) give None: the pixel size stays unknown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from temseg.frames.frame import FrameError

# nm per unit of length, keyed by the normalised lower-case unit name.
NM_PER_UNIT: dict[str, float] = {
    "pm": 1e-3,
    "picometer": 1e-3,
    "picometre": 1e-3,
    "a": 0.1,
    "ang": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "\u00e5": 0.1,  # Å (latin capital A with ring, lower-cased)
    "\u212b": 0.1,  # Angstrom sign
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "nanometers": 1.0,
    "nanometres": 1.0,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "micrometers": 1e3,
    "micrometres": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimetre": 1e6,
    "cm": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "metre": 1e9,
    "meters": 1e9,
    "metres": 1e9,
}


def nm_per_unit(unit: str | bytes | None) -> float | None:
    """nm in one ``unit`` of length, or None when the unit is not a known length.

    Spelling is forgiving: case, surrounding blanks and brackets, underscores
    (Berkeley EMD writes ``n_m`` or ``[n_m]``), the micro sign and Greek mu
    (``µm``, ``μm``), and the escaped ``\\u00B5m`` some TIFF writers store.
    """
    if unit is None:
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", errors="replace")
    name = unit.strip().strip("[]()").strip().replace("_", "")
    for micro in ("\\u00B5", "\\u00b5", "\u00b5", "\u03bc"):
        name = name.replace(micro, "u")
    return NM_PER_UNIT.get(name.lower())


def to_nm(value: float | str, unit: str | bytes | None) -> float | None:
    """``value`` (a pixel size in ``unit``) in nm; None when unit or value is unusable.

    A pixel size must be finite and positive: zero or negative values mark an
    uncalibrated image in MRC and DM files.
    """
    factor = nm_per_unit(unit)
    try:
        size = float(value)
    except (TypeError, ValueError):
        return None
    if factor is None or not math.isfinite(size) or size <= 0:
        return None
    return size * factor


def pixel_yx(
    y: float | str | None,
    x: float | str | None,
    unit_y: str | bytes | None,
    unit_x: str | bytes | None,
) -> tuple[float, float] | None:
    """Pixel size (y, x) in nm, or None unless both axes are calibrated in lengths."""
    if y is None or x is None:
        return None
    y_nm, x_nm = to_nm(y, unit_y), to_nm(x, unit_x)
    return None if y_nm is None or x_nm is None else (y_nm, x_nm)


def explicit_pixel_nm(data: Mapping[str, Any], origin: str | Path) -> float | None:
    """The ``pixel_nm`` a user wrote (a sidecar or a TIFF's description JSON), in nm per pixel.

    ``None`` when absent; anything but a positive finite number raises
    :class:`~temseg.frames.frame.FrameError` naming ``origin``.
    """
    value = data.get("pixel_nm")
    if value is None:
        return None
    try:
        pixel_nm = float(value)
    except (TypeError, ValueError):
        pixel_nm = math.nan
    if isinstance(value, bool) or not math.isfinite(pixel_nm) or pixel_nm <= 0:
        raise FrameError(f"{origin}: pixel_nm must be a positive number of nm, got {value!r}")
    return pixel_nm
