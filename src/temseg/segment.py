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
from scipy import ndimage, sparse
from scipy.sparse import csgraph

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

#: Masks with at most this many runs (maximal stretches of particle pixels along
#: a row) per pixel are labelled run by run: particles a few pixels or more
#: across make few runs, and the work after finding them grows with their
#: number, not the frame's. A mask cut into more runs than that (fine noise, or
#: a few large components full of holes) is labelled by ``scipy.ndimage.label``,
#: faster there (``benchmarks/RESULTS.md``, "Particles labelled run by run").
RUNS_MAX_PER_PIXEL = 1 / 16

#: (areas, centroid rows, centroid columns, boxes (y0, x0, y1, x1)) of the components,
#: numbered as ``scipy.ndimage.label`` numbers them (raster order of their first pixel).
_Components = tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]


def _stats_in_boxes(
    labels: np.ndarray, slices: list[tuple[slice, slice]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(areas, centroid rows, centroid columns) of labels 1..n, counted inside each label's box.

    A few direct numpy calls per label: each call holds Python's GIL for its
    overhead, and the daemon's other threads want it too.
    """
    n = len(slices)
    areas, rows, cols = np.zeros(n, np.int64), np.zeros(n), np.zeros(n)
    ramp = np.arange(max(labels.shape))
    add, dot = np.add.reduce, np.dot
    for i, (sy, sx) in enumerate(slices):
        own = labels[sy, sx] == i + 1
        per_row, per_col = add(own, axis=1, dtype=np.intp), add(own, axis=0, dtype=np.intp)
        area = int(add(per_row))
        areas[i] = area
        rows[i] = sy.start + int(dot(per_row, ramp[: per_row.size])) / area
        cols[i] = sx.start + int(dot(per_col, ramp[: per_col.size])) / area
    return areas, rows, cols


def _stats_in_one_pass(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(areas, centroid rows, centroid columns) of labels 1..n, binning only particle pixels."""
    inside = np.flatnonzero(labels)
    owner = labels.ravel()[inside]
    rows, cols = np.divmod(inside, labels.shape[1])
    areas = np.bincount(owner, minlength=n + 1)[1:]
    centroid_rows = np.bincount(owner, weights=rows, minlength=n + 1)[1:] / areas
    centroid_cols = np.bincount(owner, weights=cols, minlength=n + 1)[1:] / areas
    return areas, centroid_rows, centroid_cols


def _measure_labelled(binary: np.ndarray) -> _Components:
    """:data:`_Components` of a boolean image, labelled whole by scipy."""
    labels, n = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    slices = [box for box in ndimage.find_objects(labels) if box is not None]
    if n <= BOX_WALK_MAX_COMPONENTS:
        areas, rows, cols = _stats_in_boxes(labels, slices)
    else:
        areas, rows, cols = _stats_in_one_pass(labels, n)
    boxes = [(b[0].start, b[1].start, b[0].stop, b[1].stop) for b in slices]
    return areas, rows, cols, boxes


#: Rows whose runs are found at a time: a band of a 4096 px wide mask is 1 MiB, which
#: stays in the cache and is allocated once per mask instead of 32 MiB of fresh memory.
RUN_BAND_ROWS = 256


def _runs(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The runs of a boolean image: (first pixel, pixel after the last, row width).

    Pixels are numbered in raster order on the image with one empty column on
    either side (the row width returned), so that no run crosses a row end.
    """
    height, width = binary.shape
    padded_width = width + 2
    band = np.zeros((min(RUN_BAND_ROWS, height), padded_width), np.uint8)
    change = np.empty(max(band.size - 1, 0), bool)
    edges = []  # each run's first pixel, then the pixel after its end
    for top in range(0, height, RUN_BAND_ROWS):
        rows = min(RUN_BAND_ROWS, height - top)
        band[:rows, 1:-1] = binary[top : top + rows]
        flat = band[:rows].ravel()
        changed = change[: flat.size - 1]
        np.not_equal(flat[1:], flat[:-1], out=changed)
        edges.append(np.flatnonzero(changed) + (1 + top * padded_width))
    found = np.concatenate(edges) if edges else np.zeros(0, np.intp)
    return found[0::2], found[1::2], padded_width


def _measure_runs(starts: np.ndarray, stops: np.ndarray, padded_width: int) -> _Components:
    """:data:`_Components` of the runs :func:`_runs` found.

    Two runs in neighbouring rows touch (8-connected) when each begins before
    the pixel after the other's end; the runs of the row above that touch a
    run are consecutive, so two binary searches find them. Components are the
    connected parts of that graph of runs.
    """
    n = starts.size
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0), []
    above_starts, above_stops = starts - padded_width, stops - padded_width
    first = np.searchsorted(stops, above_starts, side="left")  # first run above ending late
    last = np.searchsorted(starts, above_stops, side="right")  # past the last starting early
    touching = np.maximum(last - first, 0)
    below = np.repeat(np.arange(n), touching)
    above = np.arange(below.size) - np.repeat(np.cumsum(touching) - touching, touching)
    above += np.repeat(first, touching)
    graph = sparse.csr_matrix((np.ones(below.size, np.int8), (above, below)), shape=(n, n))
    # Components come numbered in the order of their first run, which is raster
    # order: scipy.ndimage.label's numbering (the tests hold the two to it).
    count, component = csgraph.connected_components(graph, directed=False)

    rows = starts // padded_width
    col0 = starts - rows * padded_width - 1  # columns of the image without the empty ones
    col1 = stops - rows * padded_width - 1
    lengths = stops - starts
    areas = np.bincount(component, lengths, minlength=count).astype(np.int64)
    row_sums = np.bincount(component, lengths * rows, minlength=count)
    col_sums = np.bincount(component, lengths * (col0 + col1 - 1) / 2, minlength=count)
    by_component = np.argsort(component, kind="stable")  # each component's runs in raster order
    begins = np.searchsorted(component[by_component], np.arange(count))
    ends = np.append(begins[1:], n) - 1
    y0, y1 = rows[by_component[begins]], rows[by_component[ends]] + 1
    x0 = np.minimum.reduceat(col0[by_component], begins)
    x1 = np.maximum.reduceat(col1[by_component], begins)
    boxes = list(map(tuple, np.stack([y0, x0, y1, x1], axis=1).tolist()))
    return areas, row_sums / areas, col_sums / areas, boxes


def _components(binary: np.ndarray) -> _Components:
    """:func:`_measure_runs` for masks of few runs, else :func:`_measure_labelled`."""
    starts, stops, padded_width = _runs(binary)
    if starts.size <= binary.size * RUNS_MAX_PER_PIXEL:
        return _measure_runs(starts, stops, padded_width)
    return _measure_labelled(binary)


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
