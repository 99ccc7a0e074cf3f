"""Pixel-wise precision, recall and F1 at every threshold from one probability pass.

Each pixel's probability is binned once against the threshold grid; reverse
cumulative sums of the particle and background histograms give the true and
false positives at every threshold, so the cost is O(pixels), not
O(pixels x thresholds). A pixel counts as predicted particle at threshold
``t`` when ``probability >= t``, exactly as :func:`temseg.segment.binarize`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

CRITERIA = ("f1", "precision-recall-crossover", "min-precision=P")
TAIL_LOW = 1e-4  # lowest threshold of the log tails, and 1 - the highest


class CalibrationError(ValueError):
    """Calibration data or a criterion cannot give a threshold."""


@dataclass(frozen=True)
class Curves:
    """Pixel confusion counts and scores at each threshold (arrays of equal length).

    ``precision`` is 1 where no pixel is predicted particle (the usual end
    point of a precision-recall curve); ``predicted`` tells where it is defined.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_images: int

    @property
    def predicted(self) -> np.ndarray:
        """True where at least one pixel is predicted particle."""
        return (self.tp + self.fp) > 0

    @property
    def precision(self) -> np.ndarray:
        denom = self.tp + self.fp
        return np.where(denom > 0, self.tp / np.maximum(denom, 1), 1.0)

    @property
    def recall(self) -> np.ndarray:
        denom = self.tp + self.fn
        return np.where(denom > 0, self.tp / np.maximum(denom, 1), 1.0)

    @property
    def f1(self) -> np.ndarray:
        """F1 score, identical to the pixel-wise Dice coefficient."""
        denom = 2 * self.tp + self.fp + self.fn
        return np.where(denom > 0, 2 * self.tp / np.maximum(denom, 1), 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready curve: thresholds, precision, recall, f1 (lists of floats)."""
        return {
            "thresholds": [round(float(t), 6) for t in self.thresholds],
            "precision": [float(v) for v in self.precision],
            "recall": [float(v) for v in self.recall],
            "f1": [float(v) for v in self.f1],
        }


@dataclass(frozen=True)
class Choice:
    """A threshold picked from :class:`Curves` by a criterion."""

    threshold: float
    precision: float
    recall: float
    f1: float
    index: int
    criterion: str


def threshold_grid(n_thresholds: int = 101, *, tail_per_decade: int = 0) -> np.ndarray:
    """``n_thresholds`` evenly spaced thresholds from 0 to 1 inclusive, with log tails.

    ``tail_per_decade`` > 0 adds that many log-spaced thresholds per decade
    from :data:`TAIL_LOW` up to the first even step, and as many from one
    step below 1 up to ``1 - TAIL_LOW``: a network sure of itself puts most
    pixels within 1e-2 of 0 or 1, where an even grid has no threshold.
    """
    if n_thresholds < 2:
        raise ValueError(f"need at least 2 thresholds, got {n_thresholds}")
    even = np.linspace(0.0, 1.0, n_thresholds)
    if tail_per_decade <= 0:
        return even
    step = 1.0 / (n_thresholds - 1)
    decades = math.log10(step / TAIL_LOW)
    if decades <= 0:
        return even
    n_tail = max(1, round(decades * tail_per_decade))
    low = np.logspace(math.log10(TAIL_LOW), math.log10(step), n_tail, endpoint=False)
    return np.unique(np.concatenate([even, low, 1.0 - low]))


def as_grid(thresholds: int | np.ndarray) -> np.ndarray:
    """A threshold grid from a count (even grid) or an increasing array of thresholds."""
    if isinstance(thresholds, int | np.integer):
        return threshold_grid(int(thresholds))
    grid = np.asarray(thresholds, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise ValueError("thresholds must be an increasing 1-D array of at least 2 values")
    return grid


def threshold_histograms(
    prob: np.ndarray, mask: np.ndarray, n_thresholds: int | np.ndarray = 101
) -> np.ndarray:
    """Pixel counts (2, len(grid)): row 0 particle, row 1 background pixels.

    ``n_thresholds`` is a count (even grid, :func:`threshold_grid`) or the
    grid itself. Column ``k`` counts the pixels whose highest threshold not
    above their probability is ``thresholds[k]``; pixels below every
    threshold are not counted.
    """
    prob, mask = np.asarray(prob), np.asarray(mask)
    if prob.shape != mask.shape:
        raise ValueError(f"probability shape {prob.shape} != mask shape {mask.shape}")
    grid = as_grid(n_thresholds)
    n_thresholds = grid.size
    if prob.dtype.kind == "f":  # compare in the map's own precision, as binarize does
        grid = grid.astype(prob.dtype)
    # bins = number of thresholds <= p; bin 0 (below every threshold) is dropped
    bins = np.searchsorted(grid, prob.ravel(), side="right")
    particle = mask.ravel() > 0
    return np.stack(
        [
            np.bincount(bins[particle], minlength=n_thresholds + 1)[1:],
            np.bincount(bins[~particle], minlength=n_thresholds + 1)[1:],
        ]
    ).astype(np.int64)


def curves_from_histograms(
    histograms: np.ndarray, n_images: int, thresholds: np.ndarray | None = None
) -> Curves:
    """:class:`Curves` from summed :func:`threshold_histograms` of ``n_images`` frames.

    ``thresholds`` is the grid they were made with (default: the even grid
    of their length).
    """
    pos, neg = histograms
    tp = np.cumsum(pos[::-1])[::-1]
    fp = np.cumsum(neg[::-1])[::-1]
    grid = threshold_grid(pos.size) if thresholds is None else as_grid(thresholds)
    return Curves(thresholds=grid, tp=tp, fp=fp, fn=int(pos.sum()) - tp, n_images=n_images)


def confusion_curves(
    prob_list: Iterable[np.ndarray],
    mask_list: Iterable[np.ndarray],
    n_thresholds: int | np.ndarray = 101,
) -> Curves:
    """Confusion counts at ``n_thresholds`` thresholds (a count or a grid) over pairs of frames.

    ``prob_list`` holds particle probability maps in [0, 1] and ``mask_list``
    the matching ground-truth masks (nonzero = particle), same shapes pairwise.
    Both may be generators, so frames are processed one at a time.
    """
    grid = as_grid(n_thresholds)
    total = np.zeros((2, grid.size), dtype=np.int64)
    n_images = 0
    for prob, mask in zip(prob_list, mask_list, strict=True):
        total += threshold_histograms(prob, mask, grid)
        n_images += 1
    return curves_from_histograms(total, n_images, grid)


def parse_criterion(criterion: str) -> tuple[str, float | None]:
    """Split ``"min-precision=0.9"`` into ``("min-precision", 0.9)``; check the name."""
    name, _, value = criterion.partition("=")
    if name in ("f1", "precision-recall-crossover") and not value:
        return name, None
    if name == "min-precision":
        try:
            target = float(value)
        except ValueError:
            target = -1.0
        if not 0.0 < target <= 1.0:
            raise CalibrationError(
                f"criterion {criterion!r}: min-precision needs a value in (0, 1], "
                "e.g. min-precision=0.9"
            )
        return name, target
    raise CalibrationError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")


def choose_threshold(curves: Curves, criterion: str = "f1") -> Choice:
    """Pick a threshold from ``curves``.

    - ``f1``: maximal F1 (= Dice); ties resolve to the middle of the tied thresholds.
    - ``precision-recall-crossover``: where precision and recall are closest.
    - ``min-precision=P``: the lowest threshold whose precision is >= P.

    Only thresholds at which some pixel is predicted particle are eligible.
    """
    name, target = parse_criterion(criterion)
    if int(curves.tp[0] + curves.fn[0]) == 0:
        raise CalibrationError("the masks hold no particle pixel: precision/recall undefined")
    eligible = np.flatnonzero(curves.predicted)
    if eligible.size == 0:
        raise CalibrationError("no pixel is predicted particle at any threshold")
    precision, recall, f1 = curves.precision, curves.recall, curves.f1
    if name == "f1":
        values = f1[eligible]
        tied = eligible[values >= values.max() - 1e-12]
        index = int(tied[(tied.size - 1) // 2])
    elif name == "precision-recall-crossover":
        index = int(eligible[np.argmin(np.abs(precision[eligible] - recall[eligible]))])
    else:
        assert target is not None
        reaching = eligible[precision[eligible] >= target]
        if reaching.size == 0:
            raise CalibrationError(
                f"no threshold reaches precision {target:g} "
                f"(highest is {precision[eligible].max():.3f})"
            )
        index = int(reaching[0])
    return Choice(
        threshold=float(curves.thresholds[index]),
        precision=float(precision[index]),
        recall=float(recall[index]),
        f1=float(f1[index]),
        index=index,
        criterion=criterion,
    )


def edge_warning(curves: Curves, choice: Choice) -> str | None:
    """A warning when the chosen threshold is the lowest or highest of the grid.

    There the best threshold may lie beyond the grid, and the network's
    probabilities barely separate particle from background.
    """
    last = curves.thresholds.size - 1
    if 0 < choice.index < last:
        return None
    end = "lowest" if choice.index == 0 else "highest"
    return (
        f"the chosen threshold {choice.threshold:.6g} is the {end} of the grid "
        f"({curves.thresholds[0]:.6g}..{curves.thresholds[-1]:.6g}): the model barely "
        "separates particle from background on these frames; fine-tune it "
        "(temseg train --init) rather than rely on this threshold"
    )
