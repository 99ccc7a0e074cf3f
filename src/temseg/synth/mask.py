"""Ground-truth masks: the projected convex hull of a particle's atoms.

A pixel ``(r, c)`` (centred at coordinate ``(r, c)``) is particle when that
point lies inside, or on, the convex hull of the particle's atom centres
projected onto the image plane.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError


def outline_mask(points_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the pixels inside the convex hull of (row, col) points."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    pts = np.asarray(points_px, dtype=float).reshape(-1, 2)
    if len(pts) == 0:
        return mask
    r0, c0 = np.maximum(np.ceil(pts.min(axis=0)).astype(int), 0)
    r1, c1 = np.minimum(np.floor(pts.max(axis=0)).astype(int) + 1, (h, w))
    if r0 >= r1 or c0 >= c1:
        return mask
    try:
        equations = ConvexHull(pts).equations  # rows: normal_r, normal_c, offset
    except QhullError:  # fewer than three atoms or all on a line: mark their pixels
        rc = np.rint(pts).astype(int)
        ok = (rc[:, 0] >= 0) & (rc[:, 0] < h) & (rc[:, 1] >= 0) & (rc[:, 1] < w)
        mask[rc[ok, 0], rc[ok, 1]] = True
        return mask
    rows = np.arange(r0, r1, dtype=float)[:, None, None]
    cols = np.arange(c0, c1, dtype=float)[None, :, None]
    signed = rows * equations[:, 0] + cols * equations[:, 1] + equations[:, 2]
    mask[r0:r1, c0:c1] = np.all(signed <= 1e-9, axis=-1)
    return mask
