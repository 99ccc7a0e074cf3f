"""One JSON-ready summary of what the daemon has recorded, for ``temseg status``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from temseg.store.schema import SCHEMA_VERSION, read_session
from temseg.store.tables import FrameRow, ModelRow, utc_now


def status_summary(
    engine: Engine, window_minutes: float = 10, now: datetime | None = None
) -> dict[str, Any]:
    """Counts and throughput, JSON-serialisable (timestamps as ISO 8601 UTC).

    Keys: ``database``, ``schema_version``, ``active_model`` (id or None),
    ``total``, ``by_status`` {status: n}, ``by_material`` {material: {status: n}}
    (frames without material under ``"?"``), ``by_instrument``
    {instrument: {status: n}} (frames without instrument under ``"?"``),
    ``by_model`` {model_id: {status: n}} (model-less failures under ``"?"``),
    ``last_frame`` (dict or None, with its ``instrument`` and ``model_id``),
    ``window_minutes``, ``window_frames`` (frames processed in the last
    ``window_minutes`` before ``now``), ``frames_per_minute`` over that window
    and ``mean_latency_ms`` of its frames (None when none has a latency).
    """
    if window_minutes <= 0:
        raise ValueError(f"window_minutes must be > 0, got {window_minutes}")
    now = utc_now() if now is None else now
    since = now - timedelta(minutes=window_minutes)
    with read_session(engine) as session:
        counts = session.execute(
            select(
                FrameRow.material,
                FrameRow.instrument,
                FrameRow.model_id,
                FrameRow.status,
                func.count(),
            ).group_by(FrameRow.material, FrameRow.instrument, FrameRow.model_id, FrameRow.status)
        ).all()
        last = session.scalar(
            select(FrameRow).order_by(FrameRow.processed_at.desc(), FrameRow.id.desc()).limit(1)
        )
        window_frames, mean_latency = session.execute(
            select(func.count(), func.avg(FrameRow.latency_ms)).where(
                FrameRow.processed_at > since, FrameRow.processed_at <= now
            )
        ).one()
        active = session.scalar(select(ModelRow.id).where(ModelRow.active))
        last_frame = None
        if last is not None:
            last_frame = {
                "id": last.id,
                "source_path": last.source_path,
                "status": last.status,
                "material": last.material,
                "instrument": last.instrument,
                "model_id": last.model_id,
                "n_particles": last.n_particles,
                "latency_ms": last.latency_ms,
                "error": last.error,
                "processed_at": last.processed_at.isoformat(),
            }
    by_status: dict[str, int] = {}
    grouped: dict[str, dict[str, dict[str, int]]] = {"material": {}, "instrument": {}, "model": {}}
    for material, instrument, model_id, status, n in counts:
        by_status[status] = by_status.get(status, 0) + n
        keys = (("material", material), ("instrument", instrument), ("model", model_id))
        for kind, value in keys:
            per = grouped[kind].setdefault(value or "?", {})
            per[status] = per.get(status, 0) + n
    return {
        "database": engine.url.render_as_string(hide_password=True),
        "schema_version": SCHEMA_VERSION,
        "active_model": active,
        "total": sum(by_status.values()),
        "by_status": dict(sorted(by_status.items())),
        "by_material": dict(sorted(grouped["material"].items())),
        "by_instrument": dict(sorted(grouped["instrument"].items())),
        "by_model": dict(sorted(grouped["model"].items())),
        "last_frame": last_frame,
        "window_minutes": window_minutes,
        "window_frames": int(window_frames),
        "frames_per_minute": window_frames / window_minutes,
        "mean_latency_ms": None if mean_latency is None else float(mean_latency),
    }
