"""Probability map -> threshold -> mask -> particles. Pure numpy/scipy, no I/O.

Mask convention everywhere in temseg: ``uint8``, 0 = background, 1 = particle.
Particles are 8-connected components of the mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Particle:
    """One connected particle. Pixel coordinates are (row, column) of the frame."""

    label: int
    area_px: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive end)
    equiv_diameter_px: float
    touches_border: bool
    area_nm2: float | None = None
    equiv_diameter_nm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value, tuples as lists (JSON-ready); no deep copy (cheap per particle)."""
        data = dict(self.__dict__)  # the fields, in order (cheaper than dataclasses.fields())
        data["centroid"] = list(self.centroid)
        data["bbox"] = list(self.bbox)
        return data


@dataclass(frozen=True)
class Segmentation:
    """A thresholded frame with its particles.

    ``area_fraction`` is the fraction of the frame's pixels in the mask, 0-1.
    """

    mask: np.ndarray
    threshold: float
    particles: list[Particle]
    area_fraction: float

    @property
    def n_particles(self) -> int:
        return len(self.particles)


def binarize(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Mask (uint8 0/1) of pixels whose probability is >= ``threshold``."""
    return _above(probability, threshold).view(np.uint8)  # same bytes as the booleans


def _above(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean map of pixels whose probability is >= ``threshold``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return np.asarray(probability) >= threshold


#: Up to this many components, areas and centroids are counted inside each
#: component's bounding box; beyond it, in one pass over all particle pixels.
#: The box walk skips two passes over the whole frame, the single pass wins
#: when a noisy map has thousands of specks (``benchmarks/RESULTS.md``).
BOX_WALK_MAX_COMPONENTS = 1024

#: Masks of at least this many pixels whose particles occupy at most
#: ``WINDOW_MAX_OCCUPIED`` of the ``WINDOW_BLOCK_PX`` blocks are labelled window
#: by window: each group of touching occupied blocks is labelled on its own,
#: so the labelling skips the empty background; the particles are the same.
#: Windows stop paying from about a third of the blocks occupied, so they run
#: up to a quarter, and not on frames under 256 x 256 px (measured in
#: ``benchmarks/RESULTS.md``, "Windowed labelling from 512 px frames").
WINDOW_MIN_PIXELS = 256 * 256
WINDOW_BLOCK_PX = 16  # a multiple of 8: blocks are tested 8 pixels per 64-bit word
WINDOW_MAX_OCCUPIED = 0.25

#: (areas, centroid rows, centroid columns, boxes (y0, x0, y1, x1)) of the components,
#: numbered as ``scipy.ndimage.label`` numbers them (raster order of their first pixel).
_Components = tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]

#: (areas, centroid rows, centroid columns, column of each component's first pixel)
#: of labels 1..n; the first pixel is the leftmost one on the component's top row.
_Stats = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _stats_in_boxes(labels: np.ndarray, slices: list[tuple[slice, slice]]) -> _Stats:
    """:data:`_Stats` of labels 1..n, counted inside each label's bounding box.

    A few direct numpy calls per label: each call holds Python's GIL for its
    overhead, and the daemon's other threads want it too.
    """
    n = len(slices)
    areas, first_cols = np.zeros(n, np.int64), np.zeros(n, np.int64)
    rows, cols = np.zeros(n), np.zeros(n)
    ramp = np.arange(max(labels.shape))
    add, dot = np.add.reduce, np.dot
    for i, (sy, sx) in enumerate(slices):
        own = labels[sy, sx] == i + 1
        per_row, per_col = add(own, axis=1, dtype=np.intp), add(own, axis=0, dtype=np.intp)
        area = int(add(per_row))
        areas[i] = area
        rows[i] = sy.start + int(dot(per_row, ramp[: per_row.size])) / area
        cols[i] = sx.start + int(dot(per_col, ramp[: per_col.size])) / area
        first_cols[i] = sx.start + int(own[0].argmax())
    return areas, rows, cols, first_cols


def _stats_in_one_pass(labels: np.ndarray, n: int) -> _Stats:
    """:data:`_Stats` of labels 1..n, binning only particle pixels."""
    inside = np.flatnonzero(labels)
    owner = labels.ravel()[inside]
    rows, cols = np.divmod(inside, labels.shape[1])
    areas = np.bincount(owner, minlength=n + 1)[1:]
    centroid_rows = np.bincount(owner, weights=rows, minlength=n + 1)[1:] / areas
    centroid_cols = np.bincount(owner, weights=cols, minlength=n + 1)[1:] / areas
    first = np.full(n + 1, labels.size)
    np.minimum.at(first, owner, inside)  # pixels in raster order: the first is the smallest
    return areas, centroid_rows, centroid_cols, first[1:] % labels.shape[1]


def _label(binary: np.ndarray) -> tuple[np.ndarray, int, list[tuple[slice, slice]]]:
    """8-connected labels of a boolean image, their count and bounding slices."""
    labels, n = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    return labels, n, [box for box in ndimage.find_objects(labels) if box is not None]


def _stats(labels: np.ndarray, n: int, slices: list[tuple[slice, slice]]) -> _Stats:
    """:data:`_Stats` of labels 1..n, by the cheaper walk for ``n``."""
    if n <= BOX_WALK_MAX_COMPONENTS:
        return _stats_in_boxes(labels, slices)
    return _stats_in_one_pass(labels, n)


def _measure(binary: np.ndarray) -> _Components:
    """Areas, centroids and boxes of the components of a boolean image, labelled whole."""
    labels, n, slices = _label(binary)
    areas, rows, cols, _ = _stats(labels, n, slices)
    boxes = [(b[0].start, b[1].start, b[0].stop, b[1].stop) for b in slices]
    return areas, rows, cols, boxes


def _occupied_blocks(binary: np.ndarray, block: int) -> np.ndarray:
    """Which ``block`` x ``block`` px blocks of a boolean image hold a True pixel."""
    pad_h, pad_w = -binary.shape[0] % block, -binary.shape[1] % block
    if pad_h or pad_w:
        binary = np.pad(binary, ((0, pad_h), (0, pad_w)))
    words = np.ascontiguousarray(binary).view(np.uint64)  # 8 pixels per word
    rows_of_blocks = np.bitwise_or.reduce(words.reshape(-1, block, words.shape[1]), axis=1)
    return rows_of_blocks.reshape(rows_of_blocks.shape[0], -1, block // 8).any(axis=2)


def _measure_in_windows(binary: np.ndarray, occupied: np.ndarray) -> _Components:
    """:func:`_measure` of each group of touching occupied blocks, all labelled in one go.

    Each group's window (the bounding box of its blocks, other groups' blocks
    masked out) is copied onto one canvas, shelf by shelf and one pixel
    apart, and the canvas is labelled and measured at once: a few calls per
    window instead of a dozen, which matters because each call into numpy
    or scipy gives Python's GIL back and has to take it again, and the
    daemon's other threads want it too.
    """
    block = WINDOW_BLOCK_PX
    groups, _, group_boxes = _label(occupied)
    if not group_boxes:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0), []
    alone = _alone_in_box(groups, group_boxes)
    windows = []  # (y0, x0, height, width, group's blocks when other groups' lie in its box)
    for g, ((gy, gx), clean) in enumerate(zip(group_boxes, alone, strict=True), start=1):
        y0, x0 = gy.start * block, gx.start * block
        height = min(gy.stop * block, binary.shape[0]) - y0
        width = min(gx.stop * block, binary.shape[1]) - x0
        windows.append((y0, x0, height, width, None if clean else groups[gy, gx] == g))
    canvas, placed = _pack(binary, windows)
    labels, n, slices = _label(canvas)
    areas, rows, cols, first_cols = _stats(labels, n, slices)
    # Each component lies in one window: the one whose place holds its top-left corner.
    top, left = (np.array(v) for v in zip(*placed, strict=True))
    y0, x0, height, width = (np.array(v) for v in zip(*[w[:4] for w in windows], strict=True))
    box = np.array([(sy.start, sx.start, sy.stop, sx.stop) for sy, sx in slices]).reshape(-1, 4)
    y, x = box[:, :1], box[:, 1:2]
    inside = (top <= y) & (y < top + height) & (left <= x) & (x < left + width)
    owner = inside.argmax(axis=1)
    shift = np.stack([y0 - top, x0 - left] * 2, axis=1)[owner]
    box += shift
    order = np.lexsort((first_cols + shift[:, 1], box[:, 0]))  # scipy's numbering: raster order
    return (
        areas[order],
        rows[order] + shift[order, 0],
        cols[order] + shift[order, 1],
        list(map(tuple, box[order].tolist())),
    )


def _alone_in_box(groups: np.ndarray, boxes: list[tuple[slice, slice]]) -> np.ndarray:
    """For each labelled group, whether its bounding box holds no other group's pixel.

    One count of labelled pixels per box from a summed-area table, against the
    group's own count: no per-group pass over its box.
    """
    table = np.pad(np.cumsum(np.cumsum(groups > 0, axis=0), axis=1), ((1, 0), (1, 0)))
    y0, x0, y1, x1 = np.array([(sy.start, sx.start, sy.stop, sx.stop) for sy, sx in boxes]).T
    in_box = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    own = np.bincount(groups.ravel(), minlength=len(boxes) + 1)[1:]
    return in_box == own


def _pack(
    binary: np.ndarray, windows: list[tuple[int, int, int, int, np.ndarray | None]]
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Windows of ``binary`` on one canvas, one pixel apart; the canvas and each (top, left).

    Shelves of windows, tallest first, on a canvas about as wide as it is
    high; a window's block mask, when given, keeps only those blocks' pixels.
    """
    block = WINDOW_BLOCK_PX
    area = sum((h + 1) * (w + 1) for _, _, h, w, _ in windows)
    width = max(max(w for _, _, _, w, _ in windows), int(np.sqrt(area)))
    placed = [(0, 0)] * len(windows)
    top = left = shelf_height = 0
    for i in sorted(range(len(windows)), key=lambda i: -windows[i][2]):
        h, w = windows[i][2], windows[i][3]
        if left and left + w > width:
            top, left, shelf_height = top + shelf_height + 1, 0, 0
        placed[i] = (top, left)
        left += w + 1
        shelf_height = max(shelf_height, h)
    canvas = np.zeros((top + shelf_height, width), dtype=bool)
    for (y0, x0, h, w, own), (cy, cx) in zip(windows, placed, strict=True):
        window = binary[y0 : y0 + h, x0 : x0 + w]
        if own is not None:
            window = window & np.repeat(np.repeat(own, block, 0), block, 1)[:h, :w]
        canvas[cy : cy + h, cx : cx + w] = window
    return canvas, placed


def _components(binary: np.ndarray) -> _Components:
    """:func:`_measure_in_windows` for large masks with sparse particles, else :func:`_measure`."""
    if binary.size >= WINDOW_MIN_PIXELS:
        occupied = _occupied_blocks(binary, WINDOW_BLOCK_PX)
        if occupied.mean() <= WINDOW_MAX_OCCUPIED:
            return _measure_in_windows(binary, occupied)
    return _measure(binary)


def find_particles(
    mask: np.ndarray, pixel_nm: float | None = None, min_area_px: int = 1
) -> list[Particle]:
    """8-connected particles of a 0/1 mask with area, centroid, bbox and diameters.

    ``pixel_nm`` (nm per pixel), when known, adds ``area_nm2`` and
    ``equiv_diameter_nm``. Components smaller than ``min_area_px`` are dropped;
    labels follow ``scipy.ndimage.label`` (raster order of the first pixel).
    """
    return measure_particles(np.asarray(mask) > 0, pixel_nm, min_area_px)[0]


def measure_particles(
    binary: np.ndarray, pixel_nm: float | None = None, min_area_px: int = 1
) -> tuple[list[Particle], int]:
    """:func:`find_particles` of a boolean image, and its number of True pixels
    (every one lies in exactly one component, so no second pass counts them)."""
    areas, centroid_rows, centroid_cols, boxes = _components(binary)
    h, w = binary.shape
    centroids = zip(centroid_rows.tolist(), centroid_cols.tolist(), strict=True)
    particles: list[Particle] = []
    for i, (area, centroid, (y0, x0, y1, x1)) in enumerate(
        zip(areas.tolist(), centroids, boxes, strict=True)
    ):
        if area < min_area_px:
            continue
        diameter = math.sqrt(4.0 * area / math.pi)
        particles.append(
            Particle(
                label=i + 1,
                area_px=area,
                centroid=centroid,
                bbox=(y0, x0, y1, x1),
                equiv_diameter_px=diameter,
                touches_border=y0 == 0 or x0 == 0 or y1 == h or x1 == w,
                area_nm2=None if pixel_nm is None else float(area * pixel_nm**2),
                equiv_diameter_nm=None if pixel_nm is None else float(diameter * pixel_nm),
            )
        )
    return particles, int(areas.sum())


#: What measures a boolean mask's particles: ``(binary, pixel_nm, min_area_px)`` ->
#: (particles, number of True pixels), as :func:`measure_particles` does.
Measure = Callable[[np.ndarray, float | None, int], tuple[list[Particle], int]]


def min_particle_area_px(pixel_nm: float | None, min_diameter_nm: float) -> int:
    """Smallest area, in pixels, of a component whose equivalent diameter is at least
    ``min_diameter_nm`` (nm) at ``pixel_nm`` (nm per pixel); 1 when either is unknown or 0.

    Examples
    --------
    >>> min_particle_area_px(0.05, 1.0)  # a 1 nm disc at 0.05 nm/px: 20 px across
    315
    >>> min_particle_area_px(None, 1.0)
    1
    """
    if not pixel_nm or min_diameter_nm <= 0:
        return 1
    return max(1, math.ceil(math.pi / 4 * (min_diameter_nm / pixel_nm) ** 2))


def segment_probability(
    probability: np.ndarray,
    threshold: float,
    pixel_nm: float | None = None,
    min_area_px: int = 1,
    *,
    min_diameter_nm: float = 0.0,
    measure: Measure = measure_particles,
) -> Segmentation:
    """Threshold a probability map and measure its particles.

    The arguments after ``threshold`` are :func:`segment_mask`'s; ``measure``
    is :func:`measure_particles` unless the caller runs it elsewhere (the
    daemon can, in worker processes).
    """
    return segment_mask(
        binarize(probability, threshold),
        threshold,
        pixel_nm,
        min_area_px,
        min_diameter_nm=min_diameter_nm,
        measure=measure,
    )


def segment_mask(
    mask: np.ndarray,
    threshold: float,
    pixel_nm: float | None = None,
    min_area_px: int = 1,
    *,
    min_diameter_nm: float = 0.0,
    measure: Measure = measure_particles,
) -> Segmentation:
    """:func:`segment_probability` of a map thresholded already.

    Parameters
    ----------
    mask : ndarray
        uint8 0/1 (or bool), the map's pixels >= ``threshold`` (as :func:`binarize` gives
        them, or an engine that thresholds on its device); kept as the segmentation's mask.
    threshold : float
        The threshold it was made with, recorded with the result.
    pixel_nm : float, optional
        nm per pixel; adds sizes in nm to the particles.
    min_area_px : int
        Components of fewer pixels are not particles.
    min_diameter_nm : float
        Components whose equivalent diameter is below this (nm; needs ``pixel_nm``)
        are not particles either. Their pixels stay in the mask and in the area
        fraction: the mask is the network's, the particles what is counted.
    measure
        Measures the particles (:func:`measure_particles`, or the same elsewhere).

    Returns
    -------
    Segmentation
    """
    mask = np.ascontiguousarray(mask)
    if mask.dtype not in (np.uint8, np.bool_):
        raise ValueError(f"mask must be uint8 0/1 or bool, got {mask.dtype}")
    min_area_px = max(min_area_px, min_particle_area_px(pixel_nm, min_diameter_nm))
    particles, covered = measure(mask.view(bool), pixel_nm, min_area_px)
    fraction = covered / mask.size if mask.size else 0.0
    return Segmentation(mask.view(np.uint8), float(threshold), particles, fraction)


def measure_packed(
    bits: np.ndarray, shape: tuple[int, int], pixel_nm: float | None, min_area_px: int
) -> tuple[list[Particle], int]:
    """:func:`measure_particles` of a mask packed 8 pixels per byte (``np.packbits``).

    A 4096 x 4096 px mask packs into 2 MiB, which is what crosses to a worker process.
    """
    binary = np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).view(bool)
    return measure_particles(binary, pixel_nm, min_area_px)


def confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """Pixel counts (true positives, false positives, false negatives)."""
    p, t = pred.astype(bool), truth.astype(bool)
    return int(np.sum(p & t)), int(np.sum(p & ~t)), int(np.sum(~p & t))


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pixel-wise Dice (= F1), precision and recall; 1.0 where both are empty."""
    tp, fp, fn = confusion(pred, truth)
    precision = tp / (tp + fp) if tp + fp else 1.0 if fn == 0 else 0.0
    recall = tp / (tp + fn) if tp + fn else 1.0 if fp == 0 else 0.0
    dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"dice": dice, "precision": precision, "recall": recall}
