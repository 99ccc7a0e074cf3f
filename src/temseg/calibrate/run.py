"""Calibrate a model's probability threshold for one material on labelled frames.

The model runs once per frame (as the daemon runs it: normalisation,
pixel-size resampling, tiling); the probabilities of particle and background
pixels are histogrammed against the threshold grid, giving precision, recall
and F1 at every threshold. A criterion picks the threshold; the curve is
plotted and, with a database, stored as a ``calibrations`` row, which the
daemon uses for the next frame of that material and model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from temseg.calibrate.plot import plot_calibration
from temseg.calibrate.sweep import (
    CalibrationError,
    Choice,
    Curves,
    choose_threshold,
    curves_from_histograms,
    edge_warning,
    parse_criterion,
    threshold_grid,
    threshold_histograms,
)
from temseg.frames.read import FrameError
from temseg.model.bundle import ModelBundle
from temseg.model.resolve import resolve_bundle
from temseg.trainer.data import DataError, find_pairs, read_labelled_frame, read_pairs_file
from temseg.trainer.images import image_metadata

if TYPE_CHECKING:
    from sqlalchemy import Engine as DbEngine

TAIL_PER_DECADE = 4  # log-spaced thresholds per decade below 0.01 and above 0.99
MAX_PIXEL_RATIO = 8.0  # frame vs model pixel size beyond which resampling is meaningless


@dataclass
class CalibrationResult:
    """A chosen threshold with the curves it came from."""

    material: str
    model_id: str
    model_path: Path | None
    curves: Curves
    choice: Choice
    plot_path: Path
    calibration_id: int | None = None
    warnings: list[str] = field(default_factory=list)


def resolve_model(model: str | Path | None, db: str | None) -> ModelBundle:
    """Load a bundle folder, ``"bundled"``, a model id registered in ``db``, or for
    ``"active"`` (or None) the database's active model, else the bundled one."""
    return resolve_bundle(model, db)


def material_pairs(
    material: str, folders: Sequence[str | Path], pairs_files: Sequence[str | Path] = ()
) -> list[tuple[Path, Path, float | None]]:
    """``(image, mask, pixel_nm)`` of the labelled frames of ``material``.

    Frames come from ``folders`` and the CSV ``pairs_files``. The material
    comes from each frame's sidecar or description metadata (read without
    decoding a TIFF's pixels); frames whose metadata names none are taken
    as ``material``. None found: :class:`CalibrationError` listing the
    materials that were found.
    """
    found: dict[str, int] = {}
    pairs = []
    try:
        listed = [pair for folder in folders for pair in find_pairs(folder)]
        listed += [pair for listing in pairs_files for pair in read_pairs_file(listing)]
    except DataError as exc:
        raise CalibrationError(str(exc)) from exc
    for image, mask in listed:
        try:
            meta = image_metadata(image)
        except FrameError as exc:
            raise CalibrationError(str(exc)) from exc
        name = str(meta.get("material", material))
        found[name] = found.get(name, 0) + 1
        if name == material:
            pixel_nm = meta.get("pixel_nm")
            pairs.append((image, mask, None if pixel_nm is None else float(str(pixel_nm))))
    if not pairs:
        listing = ", ".join(f"{m} ({n})" for m, n in sorted(found.items())) or "none"
        raise CalibrationError(f"no labelled frames of {material}; materials found: {listing}")
    return pairs


def check_pixel_size(name: str, frame_nm: float | None, model_nm: float | None) -> str | None:
    """A warning when the frame's pixel size (nm) is unknown; an error when it is absurd.

    Frames whose pixel size differs from the model's by more than
    :data:`MAX_PIXEL_RATIO` times raise :class:`CalibrationError`.
    """
    if model_nm is None:
        return None
    if frame_nm is None:
        return f"{name}: pixel size unknown, assuming the model's {model_nm:g} nm"
    ratio = max(frame_nm, model_nm) / min(frame_nm, model_nm)
    if ratio > MAX_PIXEL_RATIO:
        raise CalibrationError(
            f"{name}: pixel size {frame_nm:g} nm vs the model's {model_nm:g} nm "
            f"(x{ratio:.1f}, limit x{MAX_PIXEL_RATIO:g}): wrong model or wrong metadata"
        )
    return None


def safe_name(material: str) -> str:
    """``material`` usable in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", material) or "material"


def calibrate(
    material: str,
    data: Sequence[str | Path],
    *,
    pairs: Sequence[str | Path] = (),
    model: str | Path | None = "active",
    db: str | None = None,
    out: str | Path = ".",
    criterion: str = "f1",
    backend: str = "auto",
    n_thresholds: int = 101,
    tail_per_decade: int = TAIL_PER_DECADE,
    on_warning: Callable[[str], None] | None = None,
) -> CalibrationResult:
    """Sweep thresholds for ``material`` on the labelled frames in ``data`` folders
    and ``pairs`` CSV files (frames without material metadata count as ``material``).

    The grid has ``n_thresholds`` even steps from 0 to 1 and
    ``tail_per_decade`` log-spaced thresholds per decade within one step of
    0 and of 1 (down to 1e-4); a chosen threshold at either end of the grid
    is reported through ``on_warning`` and in ``warnings``. Writes
    ``calibration_<material>.png`` into ``out`` and, when ``db`` is
    given, a calibrations row. Raises :class:`CalibrationError` for data
    that cannot calibrate (no frames of that material, only empty masks,
    absurd pixel sizes) or a criterion no threshold meets.
    """
    from temseg.engine import load_engine
    from temseg.inference import predict_probability

    parse_criterion(criterion)
    if db is not None:
        _open(db).dispose()  # an unusable database is found before the sweep, not after
    labelled = material_pairs(material, data, pairs)
    bundle = resolve_model(model, db)
    checks = (check_pixel_size(i.name, p, bundle.pixel_nm) for i, _, p in labelled)
    warnings = [w for w in checks if w]
    for warning in warnings:
        if on_warning is not None:
            on_warning(warning)
    engine = load_engine(bundle, backend=backend)
    grid = threshold_grid(n_thresholds, tail_per_decade=tail_per_decade)
    histograms = np.zeros((2, grid.size), dtype=np.int64)
    try:
        for image_path, mask_path, _ in labelled:
            try:
                frame = read_labelled_frame(image_path, mask_path)
            except DataError as exc:
                raise CalibrationError(str(exc)) from exc
            probability = predict_probability(frame.image, engine, bundle, pixel_nm=frame.pixel_nm)
            histograms += threshold_histograms(probability, frame.mask, grid)
    finally:
        engine.close()
    if histograms[0].sum() == 0:
        raise CalibrationError(
            f"all {len(labelled)} labelled {material} frames have empty masks: "
            "precision and recall are undefined"
        )
    curves = curves_from_histograms(histograms, len(labelled), grid)
    choice = choose_threshold(curves, criterion)
    edge = edge_warning(curves, choice)
    if edge is not None:
        warnings.append(edge)
        if on_warning is not None:
            on_warning(edge)
    plot_path = plot_calibration(
        curves,
        choice,
        Path(out) / f"calibration_{safe_name(material)}.png",
        title=f"{material}: {len(labelled)} frames, model {bundle.model_id} ({criterion})",
    )
    result = CalibrationResult(
        material=material,
        model_id=bundle.model_id,
        model_path=bundle.path,
        curves=curves,
        choice=choice,
        plot_path=plot_path,
        warnings=warnings,
    )
    if db is not None:
        result.calibration_id = _record(db, result, criterion)
    return result


def _open(db: str) -> DbEngine:
    from sqlalchemy.exc import OperationalError

    from temseg.store import connect, database_error

    try:
        return connect(db)
    except OperationalError as exc:
        raise database_error(db, exc) from exc


def _record(db: str, result: CalibrationResult, criterion: str) -> int:
    from sqlalchemy.exc import OperationalError

    from temseg.store import DatabaseError, database_error, record_calibration

    engine = _open(db)
    try:
        return record_calibration(
            engine,
            material=result.material,
            model_id=result.model_id,
            threshold=result.choice.threshold,
            precision=result.choice.precision,
            recall=result.choice.recall,
            dice=result.choice.f1,
            n_images=result.curves.n_images,
            curve=result.curves.to_dict(),
            plot_path=str(result.plot_path.resolve()),
            criterion=criterion,
        )
    except (DatabaseError, OperationalError) as exc:
        cause = exc if isinstance(exc, DatabaseError) else database_error(db, exc)
        raise DatabaseError(
            f"calibration of {result.material} not recorded (plot at {result.plot_path}): {cause}"
        ) from exc
    finally:
        engine.dispose()


def curve_table(curves: Curves, step: float = 0.05) -> str:
    """Plain-text table of precision, recall and F1 every ``step`` in threshold."""
    lines = [f"{'threshold':>9}  {'precision':>9}  {'recall':>7}  {'F1':>6}"]
    wanted = np.arange(0.0, 1.0 + step / 2, step)
    for t in wanted:
        k = int(np.argmin(np.abs(curves.thresholds - t)))
        lines.append(
            f"{curves.thresholds[k]:>9.2f}  {curves.precision[k]:>9.3f}  "
            f"{curves.recall[k]:>7.3f}  {curves.f1[k]:>6.3f}"
        )
    return "\n".join(lines)
