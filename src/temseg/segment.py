"""Probability map -> threshold -> mask -> particles. Pure numpy/scipy, no I/O.

Mask convention everywhere in temseg: ``uint8``, 0 = background, 1 = particle.
Particles are 8-connected components of the mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
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
        data = asdict(self)
        data["centroid"] = list(self.centroid)
        data["bbox"] = list(self.bbox)
        return data


@dataclass(frozen=True)
class Segmentation:
    """A thresholded frame with its particles."""

    mask: np.ndarray
    threshold: float
    particles: list[Particle]

    @cached_property
    def area_fraction(self) -> float:
        """Fraction of the frame's pixels that belong to particles, 0-1."""
        return np.count_nonzero(self.mask) / self.mask.size if self.mask.size else 0.0

    @property
    def n_particles(self) -> int:
        return len(self.particles)


def binarize(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Mask (uint8 0/1) of pixels whose probability is >= ``threshold``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return (probability >= threshold).astype(np.uint8)


#: Up to this many components, areas and centroids are counted inside each
#: component's bounding box; beyond it, in one pass over all particle pixels.
#: The box walk skips two passes over the whole frame (1.7 x faster on a
#: 4096 x 4096 px frame with 150 particles), the single pass wins when a noisy
#: map has thousands of specks.
BOX_WALK_MAX_COMPONENTS = 1024


def _stats_in_boxes(
    labels: np.ndarray, slices: list[tuple[slice, slice] | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Areas and centroids (row, column) of labels 1..n from their bounding boxes."""
    n = len(slices)
    areas, rows, cols = np.zeros(n, np.int64), np.zeros(n), np.zeros(n)
    for i, box in enumerate(slices):
        if box is None:
            continue
        own = labels[box] == i + 1
        per_row, per_col = np.count_nonzero(own, axis=1), np.count_nonzero(own, axis=0)
        areas[i] = per_row.sum()
        rows[i] = box[0].start + per_row @ np.arange(per_row.size) / areas[i]
        cols[i] = box[1].start + per_col @ np.arange(per_col.size) / areas[i]
    return areas, rows, cols


def _stats_in_one_pass(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Areas and centroids (row, column) of labels 1..n, binning only particle pixels."""
    inside = np.flatnonzero(labels)
    owner = labels.ravel()[inside]
    rows, cols = np.divmod(inside, labels.shape[1])
    areas = np.bincount(owner, minlength=n + 1)[1:]
    centroid_rows = np.bincount(owner, weights=rows, minlength=n + 1)[1:] / areas
    centroid_cols = np.bincount(owner, weights=cols, minlength=n + 1)[1:] / areas
    return areas, centroid_rows, centroid_cols


def find_particles(
    mask: np.ndarray, pixel_nm: float | None = None, min_area_px: int = 1
) -> list[Particle]:
    """8-connected particles of a 0/1 mask with area, centroid, bbox and diameters.

    ``pixel_nm`` (nm per pixel), when known, adds ``area_nm2`` and
    ``equiv_diameter_nm``. Components smaller than ``min_area_px`` are dropped.
    """
    labels, n = ndimage.label(mask > 0, structure=_EIGHT_CONNECTED)
    if n == 0:
        return []
    h, w = mask.shape
    slices = ndimage.find_objects(labels)
    if n <= BOX_WALK_MAX_COMPONENTS:
        areas, centroid_rows, centroid_cols = _stats_in_boxes(labels, slices)
    else:
        areas, centroid_rows, centroid_cols = _stats_in_one_pass(labels, n)
    centroids = zip(centroid_rows.tolist(), centroid_cols.tolist(), strict=True)
    particles: list[Particle] = []
    for i, (area, centroid, sl) in enumerate(zip(areas, centroids, slices, strict=True)):
        if area < min_area_px or sl is None:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        diameter = float(np.sqrt(4.0 * area / np.pi))
        particles.append(
            Particle(
                label=i + 1,
                area_px=int(area),
                centroid=(float(centroid[0]), float(centroid[1])),
                bbox=(int(y0), int(x0), int(y1), int(x1)),
                equiv_diameter_px=diameter,
                touches_border=bool(y0 == 0 or x0 == 0 or y1 == h or x1 == w),
                area_nm2=None if pixel_nm is None else float(area * pixel_nm**2),
                equiv_diameter_nm=None if pixel_nm is None else diameter * pixel_nm,
            )
        )
    return particles


def segment_probability(
    probability: np.ndarray,
    threshold: float,
    pixel_nm: float | None = None,
    min_area_px: int = 1,
) -> Segmentation:
    """Threshold a probability map and measure its particles."""
    mask = binarize(probability, threshold)
    return Segmentation(mask, float(threshold), find_particles(mask, pixel_nm, min_area_px))


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
