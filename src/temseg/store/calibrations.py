"""Per-material threshold calibrations of a model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, select

from temseg.store.schema import read_session, write_session
from temseg.store.tables import CalibrationRow, utc_now

# Built once: the daemon looks a threshold up again after every check of the database.
_LATEST_THRESHOLD = (
    select(CalibrationRow.threshold)
    .where(
        CalibrationRow.material == bindparam("material"),
        CalibrationRow.model_id == bindparam("model_id"),
    )
    .order_by(CalibrationRow.created_at.desc(), CalibrationRow.id.desc())
    .limit(1)
)


@dataclass(frozen=True)
class CalibrationRecord:
    """A calibrated probability threshold with its pixel-wise scores on
    ``n_images`` labelled images; ``curve`` holds the sweep (JSON)."""

    id: int
    material: str
    model_id: str
    threshold: float
    precision: float
    recall: float
    dice: float
    n_images: int
    created_at: datetime
    curve: dict[str, Any]
    plot_path: str | None
    criterion: str


def record_calibration(
    engine: Engine,
    *,
    material: str,
    model_id: str,
    threshold: float,
    precision: float,
    recall: float,
    dice: float,
    n_images: int,
    curve: Mapping[str, Any],
    plot_path: str | None,
    criterion: str,
) -> int:
    """Store a calibration and return its id. ``threshold`` must be in [0, 1]."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    row = CalibrationRow(
        material=material,
        model_id=model_id,
        threshold=float(threshold),
        precision=float(precision),
        recall=float(recall),
        dice=float(dice),
        n_images=int(n_images),
        created_at=utc_now(),
        curve=dict(curve),
        plot_path=None if plot_path is None else str(plot_path),
        criterion=criterion,
    )
    with write_session(engine) as session:
        session.add(row)
        session.flush()
        return row.id


def latest_calibration(engine: Engine, material: str, model_id: str) -> CalibrationRecord | None:
    """The most recent calibration of ``model_id`` for ``material``, or ``None``."""
    with read_session(engine) as session:
        row = session.scalar(
            select(CalibrationRow)
            .where(CalibrationRow.material == material, CalibrationRow.model_id == model_id)
            .order_by(CalibrationRow.created_at.desc(), CalibrationRow.id.desc())
            .limit(1)
        )
        if row is None:
            return None
        return CalibrationRecord(
            id=row.id,
            material=row.material,
            model_id=row.model_id,
            threshold=row.threshold,
            precision=row.precision,
            recall=row.recall,
            dice=row.dice,
            n_images=row.n_images,
            created_at=row.created_at,
            curve=dict(row.curve or {}),
            plot_path=row.plot_path,
            criterion=row.criterion,
        )


def latest_threshold(engine: Engine, material: str, model_id: str) -> float | None:
    """The threshold of :func:`latest_calibration`, without loading the rest of the row.

    A Core connection, not an ORM session (a third of the time): the daemon
    asks again whenever it has checked the database for changes.
    """
    with engine.connect() as conn:
        found = conn.scalar(_LATEST_THRESHOLD, {"material": material, "model_id": model_id})
    return None if found is None else float(found)


def latest_thresholds(engine: Engine, model_id: str) -> dict[str, float]:
    """Material -> threshold of the latest calibration of ``model_id`` for each material."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(CalibrationRow.material, CalibrationRow.threshold)
            .where(CalibrationRow.model_id == model_id)
            .order_by(CalibrationRow.created_at, CalibrationRow.id)
        ).all()
    return {material: float(threshold) for material, threshold in rows}  # the newest wins
