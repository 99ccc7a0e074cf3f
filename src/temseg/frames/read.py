"""Read one HRTEM frame from a TIFF file, with its pixel size and material.

Frames are opened read-only and never modified. Only single grayscale planes
are returned: the first page of a stack or series. Compressed TIFFs (deflate,
LZW, Zstandard, PackBits, ...) are decoded by tifffile with imagecodecs.
Every problem with a file (empty, truncated, not a TIFF, colour, unsupported
sample type, non-finite values, too many pixels) raises :class:`FrameError`
naming the file.

Pixel size (nm per pixel, key ``pixel_nm``) is taken from, in order:

1. a sidecar ``NAME.json`` next to the frame (same stem, key ``pixel_nm``);
2. the ImageDescription JSON written by ``tifffile.imwrite(..., metadata=)``;
3. ImageJ metadata: ``unit`` (nm, micron, um, A, ...) with the X resolution;
4. the TIFF resolution tags with a physical ResolutionUnit (cm, inch, mm, um).

Resolution tags are ignored when the unit is NONE, the resolution is 1 or 72,
or the implied pixel is 10 um or larger (display and print defaults).
The material comes from the sidecar key ``material``, then the description JSON.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

SUPPORTED_DTYPES = tuple(
    np.dtype(t) for t in ("uint8", "uint16", "int16", "int32", "uint32", "float32", "float64")
)
SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 1 << 20

# nm per unit of length, keyed by the lower-case unit names ImageJ and TIFF use.
_NM_PER_UNIT = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "a": 0.1,
    "angstrom": 0.1,
    "\u00e5": 0.1,  # Å
    "\u212b": 0.1,  # Angstrom sign
    "pm": 1e-3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
}
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


class FrameError(ValueError):
    """A frame file cannot be used; the message names the file and the problem."""


@dataclass
class Frame:
    """One grayscale frame.

    ``image`` is 2-D with the sample type stored in the file, ``pixel_nm`` is
    nm per pixel (None when the file does not say), ``metadata`` holds the
    description JSON and sidecar keys, ``read_ms`` the time spent reading (ms).
    """

    image: np.ndarray
    pixel_nm: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    read_ms: float = 0.0

    @property
    def material(self) -> str | None:
        value = self.metadata.get("material")
        return None if value is None else str(value)


def read_frame(path: str | Path, *, max_pixels: int = 2**28, data: bytes | None = None) -> Frame:
    """Read the first grayscale plane of a TIFF file with its pixel size (nm) and metadata.

    The image size is checked against ``max_pixels`` from the header, before
    any pixel data is decoded. ``data``, when given, is the file's content
    already read (e.g. to hash it): it is decoded instead of reading ``path``
    again, so the pixels always belong to the bytes that were hashed.
    """
    start = time.perf_counter()
    path = Path(path)
    try:
        image, metadata, shape = _decode(path, max_pixels, data)
    except (FrameError, OSError):
        raise
    except Exception as exc:  # tifffile raises many types for corrupt headers and tags
        raise FrameError(f"{path}: corrupt TIFF ({type(exc).__name__}: {_why(exc)})") from exc
    if image.size != shape[0] * shape[1]:
        raise FrameError(f"{path}: expected a 2-D grayscale image, got shape {image.shape}")
    image = image.reshape(shape)
    if not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise FrameError(f"{path}: image contains NaN or infinite values")
    pixel_nm = metadata.get("pixel_nm")
    return Frame(
        image=image,
        pixel_nm=None if pixel_nm is None else float(pixel_nm),
        metadata=metadata,
        path=path,
        read_ms=(time.perf_counter() - start) * 1e3,
    )


def _decode(
    path: Path, max_pixels: int, data: bytes | None = None
) -> tuple[np.ndarray, dict[str, Any], tuple[int, int]]:
    """Pixels as stored, metadata and (height, width) of the first page."""
    with _open_tiff(path, data) as tif:
        page = _first_page(path, tif)
        _check_page(path, tif, page, max_pixels)
        try:
            image = _pixels(page, data)
        except Exception as exc:  # tifffile/codecs raise many types for broken data
            raise FrameError(f"{path}: pixel data cannot be decoded ({_why(exc)})") from exc
        metadata = _collect_metadata(path, tif, page)
        return image, metadata, (int(page.imagelength), int(page.imagewidth))


def _pixels(page: tifffile.TiffPage, data: bytes | None) -> np.ndarray:
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


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of a frame without decoding its pixels.

    Keys of the ImageDescription JSON, overridden by the sidecar's, plus the
    resolved ``pixel_nm`` (nm per pixel) with ``pixel_nm_source`` ("sidecar",
    "description", "imagej" or "resolution") and ``material`` when known.
    """
    path = Path(path)
    with _open_tiff(path) as tif:
        return _collect_metadata(path, tif, _first_page(path, tif))


def decoded_bytes(path: str | Path, data: bytes | None = None, *, max_pixels: int = 2**28) -> int:
    """Bytes the first plane of a TIFF takes once decoded, from its header alone.

    A few kilobytes of deflate can decode to gigabytes; readers reserve this
    many bytes before decoding (see ``max_decoded_bytes`` in the daemon).
    Unreadable headers, and images above ``max_pixels``, raise
    :class:`FrameError` as :func:`read_frame` would.
    """
    path = Path(path)
    try:
        with _open_tiff(path, data) as tif:
            page = _first_page(path, tif)
            _check_page(path, tif, page, max_pixels)
            height, width = int(page.imagelength), int(page.imagewidth)
            samples = int(getattr(page, "samplesperpixel", 1) or 1)
            return height * width * samples * int(np.dtype(page.dtype or np.uint8).itemsize)
    except FrameError:
        raise
    except Exception as exc:  # corrupt tags, as in read_frame
        raise FrameError(f"{path}: corrupt TIFF ({type(exc).__name__}: {_why(exc)})") from exc


def sidecar_path(path: str | Path) -> Path:
    """The sidecar file of a frame: ``NAME.json`` in the frame's own folder."""
    path = Path(path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


_BYTES_REPR = re.compile(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _why(exc: BaseException, limit: int = 160) -> str:
    """The reason in ``exc`` without any of the file's bytes: tifffile quotes the
    header it found (``header=b'root'``), which for a file that is not a frame is
    someone else's data. Quoted bytes become ``b'...'``; the text is printable
    ASCII and at most ``limit`` characters."""
    text = _BYTES_REPR.sub("b'...'", str(exc))
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _open_tiff(path: Path, data: bytes | None = None) -> tifffile.TiffFile:
    if data is None:
        if not path.exists():
            raise FrameError(f"{path}: no such file")
        if not path.is_file():
            raise FrameError(f"{path}: not a regular file")
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise FrameError(f"{path}: empty file (0 bytes)")
    try:
        if data is not None:
            return tifffile.TiffFile(io.BytesIO(data), name=path.name)
        return tifffile.TiffFile(path, mode="r")
    except tifffile.TiffFileError as exc:
        raise FrameError(f"{path}: not a readable TIFF file ({_why(exc)})") from exc
    except (OSError, ValueError, IndexError, KeyError, EOFError) as exc:
        raise FrameError(f"{path}: cannot open TIFF ({_why(exc)})") from exc


def _first_page(path: Path, tif: tifffile.TiffFile) -> tifffile.TiffPage:
    try:
        page = tif.pages.first
    except (IndexError, ValueError, tifffile.TiffFileError) as exc:
        raise FrameError(f"{path}: TIFF has no readable image ({_why(exc)})") from exc
    assert isinstance(page, tifffile.TiffPage)
    return page


def _check_page(
    path: Path, tif: tifffile.TiffFile, page: tifffile.TiffPage, max_pixels: int
) -> None:
    height, width = int(page.imagelength), int(page.imagewidth)
    if height == 0 or width == 0:
        raise FrameError(f"{path}: image has no pixels ({height} x {width})")
    if height * width > max_pixels:
        raise FrameError(
            f"{path}: image of {height} x {width} pixels exceeds the limit of {max_pixels} pixels"
        )
    if page.samplesperpixel > 1 or page.photometric in _COLOUR_PHOTOMETRIC:
        raise FrameError(
            f"{path}: RGB frames are not supported (colour image, {page.samplesperpixel} "
            "sample(s) per pixel); convert to grayscale"
        )
    dtype = page.dtype
    if dtype is None or np.dtype(dtype).newbyteorder("=") not in SUPPORTED_DTYPES:
        names = ", ".join(d.name for d in SUPPORTED_DTYPES)
        raise FrameError(f"{path}: unsupported sample type {dtype} (supported: {names})")
    size = tif.filehandle.size
    if len(page.dataoffsets) != len(page.databytecounts):
        raise FrameError(
            f"{path}: corrupt TIFF ({len(page.dataoffsets)} data offsets but "
            f"{len(page.databytecounts)} byte counts)"
        )
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        if offset + count > size:
            raise FrameError(
                f"{path}: truncated file ({size} bytes; image data ends at byte {offset + count})"
            )


def _collect_metadata(
    path: Path, tif: tifffile.TiffFile, page: tifffile.TiffPage
) -> dict[str, Any]:
    description = _description_json(page)
    sidecar = _read_sidecar(path)
    metadata = {k: v for k, v in description.items() if k != "shape"}
    metadata.update(sidecar)
    metadata.pop("pixel_nm", None)
    metadata.pop("material", None)

    candidates = (
        ("sidecar", lambda: _explicit_pixel_nm(sidecar, sidecar_path(path))),
        ("description", lambda: _explicit_pixel_nm(description, path)),
        ("imagej", lambda: _imagej_pixel_nm(tif, page)),
        ("resolution", lambda: _resolution_pixel_nm(page)),
    )
    for source, get in candidates:
        value = get()
        if value is not None:
            metadata["pixel_nm"] = value
            metadata["pixel_nm_source"] = source
            break
    for origin in (sidecar, description):
        if origin.get("material") is not None:
            metadata["material"] = str(origin["material"])
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


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return {}
    if sidecar.resolve().parent != path.parent.resolve():
        raise FrameError(f"{sidecar}: sidecar resolves outside the frame's folder")
    try:
        with sidecar.open("rb") as fh:
            raw = fh.read(MAX_SIDECAR_BYTES + 1)
    except OSError as exc:
        raise FrameError(f"{sidecar}: cannot read sidecar ({exc})") from exc
    if len(raw) > MAX_SIDECAR_BYTES:
        raise FrameError(f"{sidecar}: sidecar larger than {MAX_SIDECAR_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"{sidecar}: sidecar is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise FrameError(f"{sidecar}: sidecar must hold a JSON object")
    return data


def _explicit_pixel_nm(data: dict[str, Any], origin: Path) -> float | None:
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


def _unit_nm(unit: str) -> float | None:
    name = unit.strip().replace("\\u00B5", "u").replace("\\u00b5", "u")
    name = name.replace("\u00b5", "u").replace("\u03bc", "u").lower()
    return _NM_PER_UNIT.get(name)


def _x_resolution(page: tifffile.TiffPage) -> float | None:
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    value = tag.value
    try:
        numerator, denominator = (value, 1) if not isinstance(value, tuple) else value
        resolution = float(numerator) / float(denominator)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return resolution if math.isfinite(resolution) and resolution > 0 else None


def _imagej_pixel_nm(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> float | None:
    if not tif.is_imagej:
        return None
    unit = (tif.imagej_metadata or {}).get("unit")
    nm_per_unit = None if not isinstance(unit, str) else _unit_nm(unit)
    resolution = _x_resolution(page)
    if nm_per_unit is None or resolution is None:
        return None
    return nm_per_unit / resolution


def _resolution_pixel_nm(page: tifffile.TiffPage) -> float | None:
    tag = page.tags.get("ResolutionUnit")
    try:
        unit = tifffile.RESUNIT(tag.value) if tag is not None else tifffile.RESUNIT.INCH
    except ValueError:
        return None
    resolution = _x_resolution(page)
    if unit not in _NM_PER_RESUNIT or resolution is None or resolution in _DEFAULT_RESOLUTIONS:
        return None
    pixel_nm = _NM_PER_RESUNIT[unit] / resolution
    return pixel_nm if pixel_nm < _MAX_TAG_PIXEL_NM else None
