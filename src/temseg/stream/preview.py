"""The optional frame preview of a mask message: a small 8-bit PNG of the frame.

With the daemon setting ``send_preview_px`` above 0, each mask message's header
carries ``preview``: ``{"shape": [h, w], "png": "<base64>"}``, the frame
block-averaged to at most ``send_preview_px`` pixels on its longer side and
scaled to 8 bits between its 0.5th and 99.5th percentiles (``docs/protocol.md``).
Pure functions; PNG is written with :mod:`zlib` only.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import numpy as np


def downsample(image: np.ndarray, max_px: int) -> np.ndarray:
    """``image`` (2-D) block-averaged by the smallest integer factor that makes it fit ``max_px``.

    Parameters
    ----------
    image : ndarray, shape (h, w)
        Any real dtype.
    max_px : int
        Longest side of the result, pixels (>= 1).

    Returns
    -------
    ndarray of float32, shape (h // f, w // f) with f the factor (unchanged size when f is 1).
    """
    factor = -(-max(image.shape) // max_px)
    if factor <= 1:
        return image.astype(np.float32, copy=False)
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``image`` scaled to 0..255 between its 0.5th and 99.5th percentiles (clipped)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape, np.uint8)
    low, high = np.percentile(finite, [0.5, 99.5])
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = np.nan_to_num((image - low) * scale, nan=0.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG file of ``pixels``: uint8, shape (h, w) grey or (h, w, 4) RGBA."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected uint8 (h, w) or (h, w, 4), got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 6
    if pixels.ndim == 3 and pixels.shape[2] != 4:
        raise ValueError(f"expected 4 channels (RGBA), got {pixels.shape[2]}")
    rows = np.ascontiguousarray(pixels).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def frame_preview(image: np.ndarray, max_px: int) -> dict[str, Any]:
    """The header's ``preview`` object for a frame ``image`` (2-D), see the module docstring."""
    small = to_uint8(downsample(image, max_px))
    return {
        "shape": list(small.shape),
        "png": base64.b64encode(png_bytes(small)).decode("ascii"),
    }
