"""Labelled images as people keep them: TIFF, PNG or JPEG, grayscale or gray RGB(A).

Training and calibration read images and masks through :func:`read_image`
and :func:`to_mask`. TIFF frames go through :func:`temseg.frames.read_frame`
(metadata, pixel size); PNG and JPEG are decoded with Pillow, their metadata
comes from the sidecar ``NAME.json`` alone. An RGB or RGBA image whose
three colour channels are equal everywhere (a grayscale image saved as
colour) is taken as grayscale, alpha ignored; any other colour image is
refused. Masks are 0/1, 0/255, boolean or instance labels: any nonzero
pixel is particle. JPEG is lossy, so JPEG masks are refused.

Source files are only read, never modified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from temseg.frames.read import Frame, FrameError, read_frame, read_metadata, read_sidecar

TIFF_SUFFIXES = (".tif", ".tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PLAIN_SUFFIXES
MASK_SUFFIXES = (".tif", ".tiff", ".png")


def gray_from_colour(pixels: np.ndarray, origin: str) -> np.ndarray:
    """The 2-D image of an (H, W, 3 or 4) array whose colour channels are equal.

    Unequal channels raise :class:`FrameError` naming ``origin`` and the fix.
    """
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim == 3 and pixels.shape[-1] in (2, 3, 4):
        colour = pixels[..., :3] if pixels.shape[-1] >= 3 else pixels[..., :1]
        first = colour[..., 0]
        if all(np.array_equal(first, colour[..., c]) for c in range(1, colour.shape[-1])):
            return np.ascontiguousarray(first)
        raise FrameError(
            f"{origin}: colour image (its red, green and blue channels differ); "
            "save it as a single-channel grayscale image"
        )
    raise FrameError(f"{origin}: expected a 2-D grayscale image, got shape {pixels.shape}")


def read_image(path: str | Path) -> Frame:
    """A grayscale image with its pixel size (nm) and metadata, from TIFF, PNG or JPEG."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        try:
            return read_frame(path)
        except FrameError as exc:
            if "RGB" not in str(exc):
                raise
            try:
                pixels = tifffile.imread(path)
            except Exception:  # the original error says more than tifffile's
                raise exc from None
            metadata = read_metadata(path)
            gray = gray_from_colour(np.asarray(pixels), str(path))
            return Frame(gray, metadata.get("pixel_nm"), metadata, path)
    if suffix not in PLAIN_SUFFIXES:
        raise FrameError(
            f"{path}: unsupported image type {suffix or '(none)'}; "
            f"use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    if not path.is_file():
        raise FrameError(f"{path}: no such file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGBA") if opened.mode in ("P", "PA") else opened
            pixels = np.array(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FrameError(f"{path}: not a readable {suffix[1:].upper()} image ({exc})") from exc
    if pixels.size == 0:
        raise FrameError(f"{path}: image has no pixels")
    metadata = read_sidecar(path)
    pixel_nm = metadata.get("pixel_nm")
    return Frame(gray_from_colour(pixels, str(path)), pixel_nm, metadata, path)


def read_mask(path: str | Path) -> np.ndarray:
    """A 0/1 uint8 mask from a TIFF or PNG file (see :func:`to_mask`).

    TIFF masks may have any integer or boolean (1-bit) sample type.
    """
    path = Path(path)
    if path.suffix.lower() not in MASK_SUFFIXES:
        raise FrameError(f"{path}: masks must be TIFF or PNG (JPEG is lossy), got {path.suffix}")
    if path.suffix.lower() in TIFF_SUFFIXES:
        if not path.is_file():
            raise FrameError(f"{path}: no such file")
        try:
            pixels = tifffile.imread(path)
        except Exception as exc:  # tifffile raises many types for broken files
            raise FrameError(f"{path}: not a readable TIFF mask ({exc})") from exc
    else:
        pixels = read_image(path).image
    try:
        return to_mask(pixels, str(path))
    except ValueError as exc:
        raise FrameError(str(exc)) from exc


def image_metadata(path: str | Path) -> dict[str, object]:
    """Metadata (``material``, ``pixel_nm``, ...) without decoding a TIFF's pixels."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return read_metadata(path)
    return read_sidecar(path)


def to_mask(values: np.ndarray, origin: str) -> np.ndarray:
    """A uint8 0/1 mask: any nonzero value is particle.

    Integer masks (0/1, 0/255, instance labels) and boolean ones are taken
    as they are; floating-point masks must hold only 0 and 1 (or 0 and 255).
    """
    values = np.squeeze(np.asarray(values))
    if values.ndim == 3:
        try:
            values = gray_from_colour(values, origin)
        except FrameError as exc:
            raise ValueError(str(exc)) from exc
    if values.ndim != 2:
        raise ValueError(f"{origin}: mask must be 2-D, got shape {values.shape}")
    if values.dtype.kind == "f":
        found = np.unique(values)
        if not (set(found.tolist()) <= {0.0, 1.0} or set(found.tolist()) <= {0.0, 255.0}):
            shown = ", ".join(f"{v:g}" for v in found[:6]) + (", ..." if found.size > 6 else "")
            raise ValueError(
                f"{origin}: floating-point mask values must be 0/1 or 0/255, found {shown}; "
                "save the mask as integers (0 background, nonzero particle)"
            )
    elif values.dtype.kind not in "biu":
        raise ValueError(f"{origin}: mask of type {values.dtype} is not a label image")
    return (values != 0).astype(np.uint8)
