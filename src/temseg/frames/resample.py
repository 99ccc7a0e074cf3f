"""Resampling between a frame's pixel grid and the model's training pixel size."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def model_grid_shape(
    shape: tuple[int, ...],
    pixel_nm: float | tuple[float, float] | None,
    model_pixel_nm: float | None,
) -> tuple[int, int]:
    """Shape (pixels) of a frame resampled from ``pixel_nm`` to ``model_pixel_nm`` (nm/pixel).

    ``pixel_nm`` is one size for square pixels or (y, x) for non-square ones,
    which are resampled to square model pixels along each axis separately.
    The frame keeps its shape when either pixel size is unknown.
    """
    h, w = int(shape[0]), int(shape[1])
    if pixel_nm is None or model_pixel_nm is None:
        return h, w
    y_nm, x_nm = (pixel_nm, pixel_nm) if isinstance(pixel_nm, int | float) else pixel_nm
    if min(y_nm, x_nm) <= 0 or model_pixel_nm <= 0:
        raise ValueError(f"pixel sizes must be positive, got {pixel_nm} and {model_pixel_nm} nm")
    scale_y, scale_x = y_nm / model_pixel_nm, x_nm / model_pixel_nm
    return max(1, round(h * scale_y)), max(1, round(w * scale_x))


def resample(
    image: np.ndarray, shape: tuple[int, int], order: int = 1, anti_alias: bool = True
) -> np.ndarray:
    """Resample a 2-D image onto a ``shape`` grid covering the same field of view.

    Pixel centres are mapped edge to edge (``grid_mode``), so a round trip
    keeps features in place. ``order`` is the spline order (0 nearest, 1
    linear, 3 cubic); order 0 keeps the dtype, otherwise the result is
    float32 (float64 input stays float64). When shrinking with ``order > 0``
    and ``anti_alias``, a Gaussian of sigma ``(factor - 1) / 2`` pixels is
    applied first to avoid aliasing lattice fringes.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    out_shape = (int(shape[0]), int(shape[1]))
    if min(out_shape) < 1:
        raise ValueError(f"output shape must be positive, got {out_shape}")
    if order == 0:
        dtype = image.dtype
    else:
        dtype = np.dtype(np.float64 if image.dtype == np.float64 else np.float32)
    if out_shape == image.shape:
        return image.astype(dtype, copy=True)
    factors = np.array(image.shape, dtype=np.float64) / np.array(out_shape, dtype=np.float64)
    source = image.astype(dtype, copy=False)
    if order > 0 and anti_alias and (factors > 1).any():
        sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
        source = ndimage.gaussian_filter(source, sigma=sigma, mode="nearest")
    # output pixel i covers input coordinate (i + 0.5) * factor - 0.5
    offset = 0.5 * factors - 0.5
    return ndimage.affine_transform(
        source,
        factors,
        offset=offset,
        output_shape=out_shape,
        output=dtype,
        order=order,
        mode="nearest",
        prefilter=order > 1,
    )
