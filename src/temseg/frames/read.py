"""Read the 2-D frames of a microscope file, with pixel sizes and source metadata.

The family of a file is told by its content (magic bytes), the extension
only breaking ties for formats without a signature: TIFF (plain, ImageJ,
FEI/Thermo, Olympus SIS, Gatan tags), MRC (SerialEM, Direct Electron, ...),
HDF5 (Thermo Fisher Velox EMD and Berkeley EMD), Gatan DM3/DM4 and FEI TIA
SER. Each family has its reader in :mod:`temseg.frames.formats`; every
reader returns the same :class:`Frame`. Files are opened read-only and
never modified.

A file gives one frame per 2-D grayscale image (stack planes, movie
frames, Velox signals), in file order with ``frame_index``; thumbnails and
datasets that are not images are skipped, and a file without any 2-D image
(a spectrum, a line profile) is refused. Every problem (empty, truncated,
unknown format, colour, unsupported sample type, non-finite values, too
many pixels) raises :class:`FrameError` naming the file;
:class:`IncompleteFrameError` when the file is shorter than its own header
says (still being written).

A sidecar ``NAME.json`` next to the file (same stem) overrides the file's
``pixel_nm`` (square pixels) and ``material`` and adds its other keys.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from temseg.frames.frame import Frame, FrameError, IncompleteFrameError, why
from temseg.frames.units import explicit_pixel_nm

__all__ = [
    "FORMATS",
    "Frame",
    "FrameError",
    "IncompleteFrameError",
    "decoded_bytes",
    "detect_format",
    "read_frame",
    "read_frames",
    "read_metadata",
    "sidecar_path",
]

Format = Literal["tiff", "mrc", "hdf5", "dm", "ser"]

#: File-name patterns of each family, as the daemon watches them. A TIA
#: ``.emi`` is the metadata half of a SER/EMI pair, not a frame.
FORMATS: dict[str, tuple[str, ...]] = {
    "tiff": ("*.tif", "*.tiff"),
    "mrc": ("*.mrc", "*.mrcs"),
    "hdf5": ("*.emd", "*.h5", "*.hdf5"),
    "dm": ("*.dm3", "*.dm4"),
    "ser": ("*.ser",),
}

SUPPORTED_DTYPES = tuple(
    np.dtype(t) for t in ("uint8", "uint16", "int16", "int32", "uint32", "float32", "float64")
)
SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 1 << 20

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_SER_SIGNATURE = b"II\x97\x01"
_MRC_EXTENSIONS = (".mrc", ".mrcs", ".st", ".ali", ".rec", ".map")
_NAMES = {"tiff": "TIFF", "mrc": "MRC", "hdf5": "HDF5/EMD", "dm": "DM3/DM4", "ser": "SER"}


def detect_format(path: Path, head: bytes | bytearray) -> Format:
    """Family of a file from its first bytes (at least 1 KiB when the file has them).

    MRC files carry ``MAP `` at byte 208 since MRC2014; older ones are told
    by their extension. Raises FrameError for anything else.
    """
    if head.startswith(_TIFF_SIGNATURES):
        return "tiff"
    if head.startswith(_HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(_SER_SIGNATURE):
        return "ser"
    if len(head) >= 16 and head[:4] in (b"\0\0\0\x03", b"\0\0\0\x04"):
        order_at = 8 if head[3] == 3 else 12
        if head[order_at : order_at + 4] in (b"\0\0\0\0", b"\0\0\0\x01"):
            return "dm"
    if head[208:212] == b"MAP " or path.suffix.lower() in _MRC_EXTENSIONS:
        return "mrc"
    suffix = path.suffix.lower()
    if suffix == ".emi":
        raise FrameError(
            f"{path}: a TIA .emi file holds only metadata; read its image file "
            f"{path.stem}_1.ser (the .emi next to it is used for metadata)"
        )
    expected = {".tif": "TIFF", ".tiff": "TIFF", ".emd": "HDF5/EMD", ".h5": "HDF5/EMD"}.get(
        suffix, {".dm3": "DM3", ".dm4": "DM4", ".ser": "SER"}.get(suffix)
    )
    if expected is not None:
        raise FrameError(f"{path}: not a readable {expected} file (no {expected} signature)")
    raise FrameError(
        f"{path}: unrecognised file format (supported: TIFF, MRC, Velox/Berkeley EMD, DM3/DM4, SER)"
    )


def _decoder(family: Format) -> Callable[[Path, bytes | bytearray, int], list[Frame]]:
    # imported on first use: a TIFF-only user never pays for h5py or mrcfile
    if family == "tiff":
        from temseg.frames.formats import tiff

        return tiff.decode
    if family == "mrc":
        from temseg.frames.formats import mrc

        return mrc.decode
    if family == "hdf5":
        from temseg.frames.formats import emd

        return emd.decode
    if family == "dm":
        from temseg.frames.formats import dm

        return dm.decode
    from temseg.frames.formats import ser

    return ser.decode


def read_frames(
    path: str | Path, *, max_pixels: int = 2**28, data: bytes | bytearray | None = None
) -> list[Frame]:
    """All 2-D grayscale frames of a microscope file, in file order.

    Parameters
    ----------
    path : str or Path
        The file; it names the file in errors and finds its sidecars.
    max_pixels : int
        Largest number of pixels of one frame, checked from the header
        before any pixel data is decoded.
    data : bytes, optional
        The file's content already read (e.g. to hash it): it is decoded
        instead of reading ``path`` again, so the pixels always belong to the
        bytes that were hashed. Without it the file is read once, whole.

    Returns
    -------
    list of Frame
        At least one; ``frame_index`` 0 .. n-1, ``read_ms`` the file's read
        and decode time shared out evenly.
    """
    start = time.perf_counter()
    path = Path(path)
    if data is None:
        data = _read_whole(path)
    if len(data) == 0:
        raise FrameError(f"{path}: empty file (0 bytes)")
    family = detect_format(path, data[:1024])
    try:
        frames = _decoder(family)(path, data, max_pixels)
    except (FrameError, MemoryError):
        raise
    except Exception as exc:  # the readers' libraries raise many types for corrupt files
        raise FrameError(
            f"{path}: corrupt {_NAMES[family]} file ({type(exc).__name__}: {why(exc)})"
        ) from exc
    if not frames:
        raise FrameError(f"{path}: no 2-D image in this {_NAMES[family]} file (nothing to segment)")
    sidecar = _read_sidecar(path)
    explicit = explicit_pixel_nm(sidecar, sidecar_path(path))
    read_ms = (time.perf_counter() - start) * 1e3 / len(frames)
    out = []
    for index, frame in enumerate(frames):
        image = _checked_image(path, frame.image)
        metadata = dict(frame.metadata)
        metadata.update(sidecar)
        metadata.pop("pixel_nm", None)
        pixel = frame.pixel_nm_yx
        if explicit is not None:
            pixel = (explicit, explicit)
            metadata["pixel_nm_source"] = "sidecar"
        if pixel is not None:
            metadata["pixel_nm"] = (
                pixel[0] if pixel[0] == pixel[1] else math.sqrt(pixel[0] * pixel[1])
            )
        if sidecar.get("material") is not None:
            metadata["material"] = str(sidecar["material"])
        out.append(
            Frame(
                image=image,
                pixel_nm_yx=pixel,
                metadata=metadata,
                path=path,
                read_ms=read_ms,
                frame_index=index,
                n_frames=len(frames),
            )
        )
    return out


def read_frame(
    path: str | Path, *, max_pixels: int = 2**28, data: bytes | bytearray | None = None
) -> Frame:
    """The first frame of a microscope file; see :func:`read_frames`."""
    return read_frames(path, max_pixels=max_pixels, data=data)[0]


def _read_whole(path: Path) -> bytes:
    if not path.exists():
        raise FrameError(f"{path}: no such file")
    if not path.is_file():
        raise FrameError(f"{path}: not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FrameError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _checked_image(path: Path, image: np.ndarray) -> np.ndarray:
    if image.ndim != 2:
        raise FrameError(f"{path}: expected a 2-D grayscale image, got shape {image.shape}")
    if np.dtype(image.dtype).newbyteorder("=") not in SUPPORTED_DTYPES:
        names = ", ".join(d.name for d in SUPPORTED_DTYPES)
        raise FrameError(
            f"{path}: unsupported sample type {np.dtype(image.dtype).name} (supported: {names})"
        )
    if not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise FrameError(f"{path}: image contains NaN or infinite values")
    return image


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of a file's first frame, without decoding TIFF pixels.

    The reader's keys (e.g. the ImageDescription JSON of a TIFF), overridden
    by the sidecar's, plus the resolved ``pixel_nm`` (nm per pixel) with
    ``pixel_nm_source`` and ``material`` when known.
    """
    path = Path(path)
    if not path.exists():
        raise FrameError(f"{path}: no such file")
    if not path.is_file():
        raise FrameError(f"{path}: not a regular file")
    with path.open("rb") as fh:
        head = fh.read(1024)
    if not head:
        raise FrameError(f"{path}: empty file (0 bytes)")
    if detect_format(path, head) != "tiff":
        return read_frame(path).metadata
    from temseg.frames.formats import tiff

    with tiff.open_tiff(path) as tif:
        metadata = tiff.collect_metadata(path, tif, tiff.metadata_page(path, tif))
    pixel = metadata.pop("_pixel_nm_yx", None)
    sidecar = _read_sidecar(path)
    explicit = explicit_pixel_nm(sidecar, sidecar_path(path))
    metadata.update(sidecar)
    metadata.pop("pixel_nm", None)
    if explicit is not None:
        pixel = (explicit, explicit)
        metadata["pixel_nm_source"] = "sidecar"
    if pixel is not None:
        metadata["pixel_nm"] = Frame(np.empty((0, 0)), pixel_nm_yx=pixel).pixel_nm
    if sidecar.get("material") is not None:
        metadata["material"] = str(sidecar["material"])
    return metadata


def decoded_bytes(
    path: str | Path, data: bytes | bytearray | None = None, *, max_pixels: int = 2**28
) -> int:
    """Bytes the frames of a TIFF take once decoded, from its header alone.

    A few kilobytes of deflate can decode to gigabytes; readers reserve this
    many bytes before decoding (see ``max_decoded_bytes`` in the daemon).
    Unreadable headers, and images above ``max_pixels``, raise
    :class:`FrameError` as :func:`read_frames` would (a header pointing past
    the end of the file: :class:`IncompleteFrameError`). Only TIFF headers are
    read here: for other formats (see :func:`detect_format`) the decoded size
    is known once the reader has decoded them.
    """
    from temseg.frames.formats import tiff

    path = Path(path)
    try:
        with tiff.open_tiff(path, data) as tif:
            pages = tiff.frame_pages(path, tif)
            size = len(data) if data is not None else tif.filehandle.size
            total = 0
            for page in pages:
                tiff.check_page(path, page, max_pixels, size)
                itemsize = np.dtype(page.dtype or np.uint8).itemsize
                total += int(page.imagelength) * int(page.imagewidth) * itemsize
            return total
    except FrameError:
        raise
    except Exception as exc:  # corrupt tags, as in read_frames
        raise FrameError(f"{path}: corrupt TIFF ({type(exc).__name__}: {why(exc)})") from exc


def sidecar_path(path: str | Path) -> Path:
    """The sidecar file of a frame: ``NAME.json`` in the frame's own folder."""
    path = Path(path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


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


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Metadata of an image file from its sidecar alone (for files other than TIFF).

    The sidecar's keys ({} without one), ``pixel_nm`` checked (nm per pixel,
    with ``pixel_nm_source`` "sidecar") and ``material`` as a string.
    """
    path = Path(path)
    metadata = _read_sidecar(path)
    pixel_nm = explicit_pixel_nm(metadata, sidecar_path(path))
    if pixel_nm is not None:
        metadata.update(pixel_nm=pixel_nm, pixel_nm_source="sidecar")
    if metadata.get("material") is not None:
        metadata["material"] = str(metadata["material"])
    return metadata
