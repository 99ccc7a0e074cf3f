"""TIFF frames: plain, ImageJ, FEI/Thermo, Olympus SIS and Gatan tags; stacks of equal pages.

Compressed TIFFs (deflate, LZW, Zstandard, PackBits, ...) are decoded by
tifffile with imagecodecs. Pages that are reduced-resolution thumbnails,
colour previews, or of another shape or sample type than the first
grayscale page are skipped; the grayscale pages left are the frames. A TIFF
with colour pages only is refused.

Pixel size (``pixel_nm_source``), first found wins (a sidecar, handled by
:func:`temseg.frames.read.read_frames`, comes before all):

1. ``description``: ``pixel_nm`` in the ImageDescription JSON written by
   ``tifffile.imwrite(..., metadata=)``;
2. ``fei``: FEI/Thermo Fisher tags (``Scan``/``EScan`` PixelWidth and
   PixelHeight, metres);
3. ``sis``: Olympus SIS tag (pixelsizex, pixelsizey, metres);
4. ``gatan``: Gatan's private tags (65009/65010 scales, 65003/65004 units);
5. ``jeol``: a JEOL SightX TIFF (Make "JEOL Ltd.") scales its resolution
   tags by the magnification in its XML description; that reading comes from
   rosettasciio (GPL-3), an optional extra imported only for such a file.
   Without it the pixel size stays unknown and ``pixel_nm_note`` says how to
   install it;
6. ``imagej``: ImageJ ``unit`` (nm, micron, um, A, ...) with X/Y resolution;
7. ``resolution``: resolution tags with a physical ResolutionUnit (cm, inch,
   mm, um), ignored when the unit is NONE, the resolution is 1 or 72, or the
   implied pixel is 10 um or larger (display and print defaults).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from temseg.frames.formats.common import check_extent, check_size, file_over
from temseg.frames.frame import Frame, FrameError, why
from temseg.frames.units import explicit_pixel_nm, nm_per_unit, pixel_yx

_NM_PER_RESUNIT = {
    tifffile.RESUNIT.INCH: 2.54e7,
    tifffile.RESUNIT.CENTIMETER: 1e7,
    tifffile.RESUNIT.MILLIMETER: 1e6,
    tifffile.RESUNIT.MICROMETER: 1e3,
}
_MAX_TAG_PIXEL_NM = 1e4  # resolution tags implying pixels >= 10 um are display defaults
_DEFAULT_RESOLUTIONS = (1.0, 72.0)
_COLOUR_PHOTOMETRIC = (
    tifffile.PHOTOMETRIC.RGB,
    tifffile.PHOTOMETRIC.PALETTE,
    tifffile.PHOTOMETRIC.YCBCR,
    tifffile.PHOTOMETRIC.SEPARATED,
    tifffile.PHOTOMETRIC.CIELAB,
    tifffile.PHOTOMETRIC.ICCLAB,
    tifffile.PHOTOMETRIC.ITULAB,
    tifffile.PHOTOMETRIC.CFA,
)
_SIS_TAG = 33560
_GATAN_UNIT_YX = (65003, 65004)
_GATAN_SCALE_YX = (65009, 65010)
JEOL_MAKE = "JEOL Ltd."
JEOL_NOTE = (
    "the pixel size of a JEOL TIFF needs the optional reader rosettasciio (GPL-3): "
    "pip install 'temseg[formats]'"
)


def decode(path: Path, data: bytes | bytearray | None, max_pixels: int) -> list[Frame]:
    """The grayscale frames of a TIFF (from ``data`` when given, else from ``path``)."""
    with open_tiff(path, data) as tif:
        pages = frame_pages(path, tif)
        size = len(data) if data is not None else tif.filehandle.size
        for page in pages:
            check_page(path, page, max_pixels, size)
        metadata = collect_metadata(path, tif, pages[0], data)
        pixel = metadata.pop("_pixel_nm_yx", None)
        frames = []
        for page in pages:
            try:
                image = _pixels(page, data)
            except Exception as exc:  # tifffile/codecs raise many types for broken data
                raise FrameError(f"{path}: pixel data cannot be decoded ({why(exc)})") from exc
            shape = (int(page.imagelength), int(page.imagewidth))
            if image.size != shape[0] * shape[1]:
                raise FrameError(f"{path}: expected a 2-D grayscale image, got shape {image.shape}")
            frames.append(
                Frame(image=image.reshape(shape), pixel_nm_yx=pixel, metadata=dict(metadata))
            )
        return frames


def open_tiff(path: Path, data: bytes | bytearray | None = None) -> tifffile.TiffFile:
    """A TiffFile over ``data`` or the file, or FrameError naming the file."""
    try:
        if data is not None:
            return tifffile.TiffFile(file_over(data), name=path.name)
        return tifffile.TiffFile(path, mode="r")
    except tifffile.TiffFileError as exc:
        raise FrameError(f"{path}: not a readable TIFF file ({why(exc)})") from exc
    except (OSError, ValueError, IndexError, KeyError, EOFError) as exc:
        raise FrameError(f"{path}: cannot open TIFF ({why(exc)})") from exc


def _pages(path: Path, tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    try:
        pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]
    except (IndexError, ValueError, tifffile.TiffFileError) as exc:
        raise FrameError(f"{path}: TIFF has no readable image ({why(exc)})") from exc
    if not pages:
        raise FrameError(f"{path}: TIFF has no readable image")
    return pages


def metadata_page(path: Path, tif: tifffile.TiffFile) -> tifffile.TiffPage:
    """The page whose tags describe the file: the first grayscale frame, else the first page
    (a colour image's metadata is read as well, e.g. for labelled data converted to gray)."""
    try:
        return frame_pages(path, tif)[0]
    except FrameError:
        return _pages(path, tif)[0]


def frame_pages(path: Path, tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    """Grayscale full-resolution pages with the first one's shape and sample type."""
    pages = _pages(path, tif)
    grey = [
        p
        for p in pages
        if not p.subfiletype & tifffile.FILETYPE.REDUCEDIMAGE
        and p.samplesperpixel == 1
        and p.photometric not in _COLOUR_PHOTOMETRIC
    ]
    if not grey:
        page = pages[0]
        raise FrameError(
            f"{path}: RGB frames are not supported (colour image, {page.samplesperpixel} "
            "sample(s) per pixel); convert to grayscale"
        )
    first = grey[0]
    key = (first.imagelength, first.imagewidth, first.dtype)
    return [p for p in grey if (p.imagelength, p.imagewidth, p.dtype) == key]


def check_page(path: Path, page: tifffile.TiffPage, max_pixels: int, size: int) -> None:
    check_size(path, int(page.imagelength), int(page.imagewidth), max_pixels)
    if page.dtype is None:
        raise FrameError(f"{path}: unsupported sample type (bits per sample {page.bitspersample})")
    if len(page.dataoffsets) != len(page.databytecounts):
        raise FrameError(
            f"{path}: corrupt TIFF ({len(page.dataoffsets)} data offsets but "
            f"{len(page.databytecounts)} byte counts)"
        )
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        check_extent(path, size, offset + count)


def _pixels(page: tifffile.TiffPage, data: bytes | bytearray | None) -> np.ndarray:
    """The page's pixels as stored (file byte order).

    With ``data`` given and the pixels stored as one uncompressed run (no
    predictor, normal fill order), a read-only view into ``data``: decoding
    from memory through tifffile copies the pixels while holding the GIL,
    tens of ms per 4096 x 4096 px frame in which no other daemon thread
    runs Python. Otherwise tifffile decodes them.
    """
    one_run = page.dtype is not None and page.is_contiguous
    if data is None or not (one_run and page.predictor == 1 and page.fillorder == 1):
        return page.asarray()
    dtype = np.dtype(page.dtype).newbyteorder(page.parent.byteorder)
    return np.frombuffer(data, dtype=dtype, count=page.size, offset=page.dataoffsets[0])


def collect_metadata(
    path: Path,
    tif: tifffile.TiffFile,
    page: tifffile.TiffPage,
    data: bytes | bytearray | None = None,
) -> dict[str, Any]:
    """Description JSON keys and vendor facts; ``_pixel_nm_yx`` and its source when known."""
    description = _description_json(page)
    metadata: dict[str, Any] = {k: v for k, v in description.items() if k != "shape"}
    metadata.pop("pixel_nm", None)
    metadata["format"] = "tiff"
    metadata.update(_vendor_metadata(tif, page))
    candidates = (
        ("description", lambda: _described_pixel_nm(description, path)),
        ("fei", lambda: _fei_pixel_nm(tif)),
        ("sis", lambda: _sis_pixel_nm(page)),
        ("gatan", lambda: _gatan_pixel_nm(page)),
        ("jeol", lambda: _jeol_pixel_nm(path, page, data, metadata)),
        ("imagej", lambda: _imagej_pixel_nm(tif, page)),
        ("resolution", lambda: _resolution_pixel_nm(page)),
    )
    for source, get in candidates:
        value = get()
        if value is not None:
            metadata["_pixel_nm_yx"] = value
            metadata["pixel_nm_source"] = source
            break
    return metadata


def _description_json(page: tifffile.TiffPage) -> dict[str, Any]:
    text = page.description.strip()
    if not text.startswith("{"):
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _described_pixel_nm(description: dict[str, Any], path: Path) -> tuple[float, float] | None:
    pixel_nm = explicit_pixel_nm(description, path)
    return None if pixel_nm is None else (pixel_nm, pixel_nm)


def _vendor_metadata(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if tif.is_fei:
        fei = tif.fei_metadata or {}
        beam = fei.get("EBeam") or fei.get("Beam") or {}
        volts = beam.get("HV") if isinstance(beam, dict) else None
        if isinstance(volts, int | float) and volts > 0:
            found["voltage_kv"] = float(volts) / 1e3
        user = fei.get("User") or {}
        if isinstance(user, dict) and user.get("Date"):
            found["acquired"] = f"{user.get('Date')} {user.get('Time', '')}".strip()
        found["vendor"] = "FEI"
    sis = page.tags.get(_SIS_TAG)
    if sis is not None and isinstance(sis.value, dict):
        magnification = sis.value.get("magnification")
        if isinstance(magnification, int | float) and magnification > 0:
            found["magnification"] = float(magnification)
        found["vendor"] = "Olympus SIS"
    made = page.tags.get("DateTime")
    if made is not None and "acquired" not in found:
        found["acquired"] = str(made.value)
    return found


def _fei_pixel_nm(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    if not tif.is_fei:
        return None
    fei = tif.fei_metadata or {}
    for section in ("Scan", "EScan", "IScan"):
        scan = fei.get(section)
        if isinstance(scan, dict):
            found = pixel_yx(scan.get("PixelHeight"), scan.get("PixelWidth"), "m", "m")
            if found is not None:
                return found
    return None


def _sis_pixel_nm(page: tifffile.TiffPage) -> tuple[float, float] | None:
    tag = page.tags.get(_SIS_TAG)
    if tag is None or not isinstance(tag.value, dict):
        return None
    return pixel_yx(tag.value.get("pixelsizey"), tag.value.get("pixelsizex"), "m", "m")


def _tag_text(page: tifffile.TiffPage, code: int) -> str | None:
    tag = page.tags.get(code)
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, bytes):
        return value.rstrip(b"\0").decode("latin-1")
    return str(value)


def _tag_number(page: tifffile.TiffPage, code: int) -> float | None:
    tag = page.tags.get(code)
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, tuple | list) and value:
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _gatan_pixel_nm(page: tifffile.TiffPage) -> tuple[float, float] | None:
    units = [_tag_text(page, code) for code in _GATAN_UNIT_YX]
    scales = [_tag_number(page, code) for code in _GATAN_SCALE_YX]
    return pixel_yx(scales[0], scales[1], units[0], units[1])


def _jeol_pixel_nm(
    path: Path, page: tifffile.TiffPage, data: bytes | bytearray | None, metadata: dict[str, Any]
) -> tuple[float, float] | None:
    """Pixel size of a JEOL SightX TIFF read by rosettasciio, when it is installed."""
    make = page.tags.get("Make")
    if make is None or str(make.value).strip() != JEOL_MAKE:
        return None
    try:
        from rsciio.tiff import file_reader
    except ImportError:
        metadata["pixel_nm_note"] = JEOL_NOTE
        return None
    try:  # from the bytes already read when there are some: the hashed bytes
        signals = file_reader(io.BytesIO(data) if data is not None else str(path))
        axes = {a.get("name"): a for a in signals[0]["axes"]}
        y, x = axes.get("y") or axes.get("height"), axes.get("x") or axes.get("width")
    except Exception as exc:  # another library's errors: the pixel size stays unknown
        metadata["pixel_nm_note"] = f"rosettasciio could not read the JEOL metadata ({exc})"
        return None
    if x is None or y is None:
        return None
    return pixel_yx(y.get("scale"), x.get("scale"), y.get("units"), x.get("units"))


def _resolution(page: tifffile.TiffPage, name: str) -> float | None:
    tag = page.tags.get(name)
    if tag is None:
        return None
    value = tag.value
    try:
        numerator, denominator = (value, 1) if not isinstance(value, tuple) else value
        resolution = float(numerator) / float(denominator)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return resolution if math.isfinite(resolution) and resolution > 0 else None


def _resolution_yx(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """Pixels per unit along y and x; y falls back to x when only XResolution is set."""
    x = _resolution(page, "XResolution")
    if x is None:
        return None
    y = _resolution(page, "YResolution")
    return (x if y is None else y, x)


def _imagej_pixel_nm(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> tuple[float, float] | None:
    if not tif.is_imagej:
        return None
    unit = (tif.imagej_metadata or {}).get("unit")
    factor = nm_per_unit(unit) if isinstance(unit, str) else None
    resolution = _resolution_yx(page)
    if factor is None or resolution is None:
        return None
    return (factor / resolution[0], factor / resolution[1])


def _resolution_pixel_nm(page: tifffile.TiffPage) -> tuple[float, float] | None:
    tag = page.tags.get("ResolutionUnit")
    try:
        unit = tifffile.RESUNIT(tag.value) if tag is not None else tifffile.RESUNIT.INCH
    except ValueError:
        return None
    resolution = _resolution_yx(page)
    if unit not in _NM_PER_RESUNIT or resolution is None:
        return None
    if any(r in _DEFAULT_RESOLUTIONS for r in resolution):
        return None
    pixel = (_NM_PER_RESUNIT[unit] / resolution[0], _NM_PER_RESUNIT[unit] / resolution[1])
    return pixel if max(pixel) < _MAX_TAG_PIXEL_NM else None
