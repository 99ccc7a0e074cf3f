"""Intensity normalisation of a frame before it enters the network."""

from __future__ import annotations

import numpy as np

from temseg.frames.read import FrameError

METHODS = ("max", "minmax", "zscore")


def normalise(image: np.ndarray, method: str = "max", out: np.ndarray | None = None) -> np.ndarray:
    """Scale intensities to float32 as the model was trained.

    ``"max"`` divides by the largest absolute value (the paper's scaling;
    counts become [0, 1]), ``"minmax"`` maps [min, max] to [0, 1] and
    ``"zscore"`` subtracts the mean and divides by the standard deviation.
    An empty or constant image gives zeros; NaN or infinite values raise
    :class:`FrameError`. ``out``, a float32 array of the image's shape,
    receives the result (and is returned) instead of a new array.
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r}; choose from {', '.join(METHODS)}")
    image = np.asarray(image)
    if out is not None and (out.dtype != np.float32 or out.shape != image.shape):
        raise ValueError(f"out must be float32 of shape {image.shape}, got {out.dtype} {out.shape}")
    if np.issubdtype(image.dtype, np.integer):
        return _normalise_integer(image, method, out)
    if out is None:
        out = image.astype(np.float32)
    else:
        out[...] = image
    if out.size == 0:
        return out
    if not np.isfinite(out).all():
        raise FrameError("image contains NaN or infinite values")
    low, high = float(out.min()), float(out.max())
    if low == high:
        out.fill(0.0)
        return out
    if method == "max":
        out *= np.float32(1.0 / max(abs(low), abs(high)))
    elif method == "minmax":
        out -= np.float32(low)
        out *= np.float32(1.0 / (high - low))
    else:
        _standardise(out)
    return out


def _normalise_integer(image: np.ndarray, method: str, out: np.ndarray | None) -> np.ndarray:
    """:func:`normalise` for integer counts: range taken on the integers, one pass to float32."""
    if out is None:
        out = np.empty(image.shape, dtype=np.float32)
    if image.size == 0:
        return out
    low, high = int(image.min()), int(image.max())
    if low == high:
        out.fill(0.0)
        return out
    if method == "max":
        np.multiply(image, np.float32(1.0 / max(abs(low), abs(high))), out=out, casting="unsafe")
    elif method == "minmax":
        np.subtract(image, np.float32(low), out=out, casting="unsafe")
        out *= np.float32(1.0 / (high - low))
    else:
        out[...] = image
        _standardise(out)
    return out


def _standardise(out: np.ndarray) -> None:
    """Subtract the mean and divide by the standard deviation, in place (float64 sums)."""
    mean = float(out.mean(dtype=np.float64))
    std = float(out.std(dtype=np.float64))
    out -= np.float32(mean)
    out *= np.float32(1.0 / std)
