"""Padding to the network's size multiple and overlapping-tile inference.

Large frames are processed as overlapping tiles so that the network never
holds more than one batch of tiles. Tile origins are multiples of the
network's ``size_multiple``, so every tile sees the same pooling grid as the
whole frame would; each output pixel is taken from the tile in which it lies
farthest from a tile edge (the overlap is split at its middle). When half the
overlap covers the network's receptive-field radius, the tiled result equals
whole-frame inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import numpy as np


def pad_to_multiple(
    image: np.ndarray, multiple: int, mode: str = "reflect"
) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad the bottom and right of a 2-D image up to multiples of ``multiple`` pixels.

    Returns the padded image (the input itself when no padding is needed) and
    the original ``(height, width)`` to crop back with ``out[:height, :width]``.
    Reflection falls back to edge padding along axes of a single pixel.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    h, w = image.shape[:2]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return image, (h, w)
    if mode == "reflect" and min(h, w) < 2:
        mode = "edge"
    padded = np.pad(image, ((0, pad_h), (0, pad_w)), mode=mode)  # type: ignore[call-overload]
    return padded, (h, w)


def _axis_plan(length: int, tile: int, overlap: int, multiple: int) -> tuple[int, list[int]]:
    """Tile size and origins along one axis of ``length`` pixels (a multiple of ``multiple``).

    Uses the fewest tiles of at most ``tile`` pixels that overlap by at least
    ``overlap`` pixels, each as small as that allows, so little is computed twice.
    """
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    limit = max(multiple, tile // multiple * multiple)
    if (limit - overlap) // multiple < 1:
        raise ValueError(
            f"overlap {overlap} px leaves no step inside a {limit} px tile "
            f"(size multiple {multiple} px)"
        )
    if length <= limit:
        return length, [0]
    n = math.ceil((length - overlap) / (limit - overlap))
    while True:
        smallest = math.ceil((length + (n - 1) * overlap) / n / multiple) * multiple
        for size in range(min(smallest, limit), limit + 1, multiple):
            step = (size - overlap) // multiple * multiple
            if step >= multiple and 1 + math.ceil((length - size) / step) <= n:
                return size, [*range(0, length - size, step), length - size]
        n += 1


def tile_windows(
    shape: tuple[int, int], tile: int, overlap: int, multiple: int
) -> list[tuple[slice, slice]]:
    """Overlapping windows of at most ``tile`` x ``tile`` pixels covering ``shape``.

    ``shape`` must be multiples of ``multiple``; ``tile`` is rounded down to a
    multiple. All windows have the same size (the smallest that covers the
    frame with the fewest tiles), start on multiples of ``multiple`` and
    overlap their neighbours by at least ``overlap`` pixels.
    """
    h, w = int(shape[0]), int(shape[1])
    if h % multiple or w % multiple:
        raise ValueError(f"shape {shape} is not a multiple of {multiple} pixels; pad it first")
    th, ys = _axis_plan(h, tile, overlap, multiple)
    tw, xs = _axis_plan(w, tile, overlap, multiple)
    return [(slice(y, y + th), slice(x, x + tw)) for y in ys for x in xs]


def engine_shape(shape: tuple[int, int], tile: int, overlap: int, multiple: int) -> tuple[int, int]:
    """(height, width) in pixels the network is given for a frame padded to ``shape``.

    The frame itself when it fits within ``tile`` pixels, else the size of
    its tiles (all tiles of a frame are the same size, see :func:`tile_windows`).
    """
    rows, cols = tile_windows(shape, tile, overlap, multiple)[0]
    return rows.stop - rows.start, cols.stop - cols.start


def _owned(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """Per tile, the [begin, end) range it writes: overlaps are split at their middle."""
    bounds = [0]
    for prev, nxt in pairwise(starts):
        bounds.append((nxt + prev + size) // 2)
    bounds.append(length)
    return list(pairwise(bounds))


def predict_tiled(
    image: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    tile: int,
    overlap: int,
    multiple: int,
    batch_size: int = 1,
) -> np.ndarray:
    """Run ``predict`` over overlapping tiles of a 2-D image; float32 result of the same shape.

    ``predict`` takes float32 (N, 1, h, w) and returns (N, h, w), like
    :meth:`temseg.engine.Engine.predict`. The image is padded to ``multiple``
    pixels (reflection) and cropped back. At most ``batch_size`` tiles are
    passed per call; a frame within ``tile`` pixels is one call.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    padded, (h, w) = pad_to_multiple(image, multiple)
    ph, pw = padded.shape
    th, ys = _axis_plan(ph, tile, overlap, multiple)
    tw, xs = _axis_plan(pw, tile, overlap, multiple)
    own_y, own_x = _owned(ys, th, ph), _owned(xs, tw, pw)
    jobs = [
        (y, x, oy, ox)
        for y, oy in zip(ys, own_y, strict=True)
        for x, ox in zip(xs, own_x, strict=True)
    ]
    out = np.empty((ph, pw), dtype=np.float32)
    for first in range(0, len(jobs), batch_size):
        group = jobs[first : first + batch_size]
        batch = np.stack([padded[y : y + th, x : x + tw] for y, x, _, _ in group])
        result = np.asarray(predict(batch[:, None].astype(np.float32, copy=False)))
        if result.shape != (len(group), th, tw):
            raise ValueError(
                f"predict returned shape {result.shape}, expected {(len(group), th, tw)}"
            )
        for tile_out, (y, x, (y0, y1), (x0, x1)) in zip(result, group, strict=True):
            out[y0:y1, x0:x1] = tile_out[y0 - y : y1 - y, x0 - x : x1 - x]
    return out[:h, :w]
