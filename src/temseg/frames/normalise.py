"""Intensity normalisation of a frame before it enters the network.

A model bundle names its method (``normalisation.method`` in ``model.json``);
the daemon, ``segment``, ``calibrate`` and the trainer all scale frames
through :func:`normalise` with it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from temseg.frames.read import FrameError

Method = Literal["max", "minmax", "zscore", "pynanofind"]
METHODS: tuple[Method, ...] = ("max", "minmax", "zscore", "pynanofind")
#: pyNanoFind's outlier rule: a pixel further than this many standard
#: deviations of the image from its 3x3 median is replaced by that median.
OUTLIER_SIGMA = 5.0


def normalise(image: np.ndarray, method: str = "max", out: np.ndarray | None = None) -> np.ndarray:
    """Scale intensities to float32 as the model was trained.

    ``"max"`` divides by the largest absolute value (temseg's own and the
    paper's training scaling; counts become [0, 1]), ``"minmax"`` maps
    [min, max] to [0, 1], ``"zscore"`` subtracts the mean and divides by the
    standard deviation (HRTEM-Generalization, per frame) and
    ``"pynanofind"`` is pyNanoFind's ``median_filter`` (see
    :func:`replace_outliers`, then [min, max] to [0, 1]).
    An empty or constant image gives zeros; NaN or infinite values raise
    :class:`FrameError`. ``out``, a float32 array of the image's shape,
    receives the result (and is returned) instead of a new array.
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r}; choose from {', '.join(METHODS)}")
    image = np.asarray(image)
    if out is not None and (out.dtype != np.float32 or out.shape != image.shape):
        raise ValueError(f"out must be float32 of shape {image.shape}, got {out.dtype} {out.shape}")
    if method == "pynanofind":
        return _pynanofind(image, out)
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


def replace_outliers(image: np.ndarray, sigma: float = OUTLIER_SIGMA) -> np.ndarray:
    """A float32 copy of ``image`` with pixels far from their 3x3 median replaced by it.

    A pixel is replaced when it differs from the median of its 3 x 3
    neighbourhood (mirrored at the edges) by more than ``sigma`` standard
    deviations of the whole image: pyNanoFind's x-ray (hot pixel) removal.
    The median of the nine values lies between the smallest and the largest
    of the eight neighbours, so only pixels further than that from one of
    those bounds can be replaced; medians are taken for those pixels only
    (the same result as a full median filter at a fraction of its cost).
    """
    values = np.asarray(image, dtype=np.float32)
    cleaned = values.copy()
    if values.ndim != 2 or min(values.shape) < 2:
        return cleaned
    threshold = np.float32(sigma * float(np.std(image, dtype=np.float64)))
    padded = np.pad(values, 1, mode="reflect")  # numpy's "reflect" is ndimage's "mirror"
    h, w = values.shape
    offsets = [(dy, dx) for dy in range(3) for dx in range(3)]
    neighbours = [padded[dy : dy + h, dx : dx + w] for dy, dx in offsets if (dy, dx) != (1, 1)]
    low, high = neighbours[0].copy(), neighbours[0].copy()
    for view in neighbours[1:]:
        np.minimum(low, view, out=low)
        np.maximum(high, view, out=high)
    low -= values
    high -= values
    ys, xs = np.nonzero((low < -threshold) | (high > threshold))
    if ys.size:
        window = np.stack([padded[ys + dy, xs + dx] for dy, dx in offsets], axis=1)
        median = np.median(window, axis=1).astype(np.float32)
        far = np.abs(values[ys, xs] - median) > threshold
        cleaned[ys[far], xs[far]] = median[far]
    return cleaned


def _pynanofind(image: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """pyNanoFind's ``median_filter``: outliers replaced, divided by the std, [min, max] to [0, 1].

    Dividing by the standard deviation before the min-max scaling changes
    nothing but rounding, so only the min-max scaling is done.
    """
    if image.size and not np.isfinite(image).all():
        raise FrameError("image contains NaN or infinite values")
    cleaned = replace_outliers(image) if image.size else image.astype(np.float32)
    if out is None:
        out = cleaned
    else:
        out[...] = cleaned
    if out.size == 0:
        return out
    low, high = float(out.min()), float(out.max())
    if low == high:
        out.fill(0.0)
        return out
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    return out
