"""Intensity normalisation of a frame before it enters the network."""

from __future__ import annotations

import numpy as np

from temseg.frames.read import FrameError

METHODS = ("max", "minmax", "zscore")


def normalise(image: np.ndarray, method: str = "max") -> np.ndarray:
    """Scale intensities to float32 as the model was trained.

    ``"max"`` divides by the largest absolute value (the paper's scaling;
    counts become [0, 1]), ``"minmax"`` maps [min, max] to [0, 1] and
    ``"zscore"`` subtracts the mean and divides by the standard deviation.
    An empty or constant image gives zeros; NaN or infinite values raise
    :class:`FrameError`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r}; choose from {', '.join(METHODS)}")
    out = np.asarray(image, dtype=np.float32)
    if out is image:
        out = out.copy()
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
        mean = float(out.mean(dtype=np.float64))
        std = float(out.std(dtype=np.float64))
        out -= np.float32(mean)
        out *= np.float32(1.0 / std)
    return out
