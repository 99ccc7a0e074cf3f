"""Record frames' results and their particles: a row is a frame's result for a model.

Rows are unique per (source_path, sha256, model_id), in the database itself; the
daemon's live results and ``temseg reprocess``'s share them. Whether a model
still has work on some content is asked by (sha256, model_id)
(:func:`result_id`, :func:`recorded_contents`), wherever the file lies now. A
failure before any model ran (``model_id`` ``None``) is unique per
(source_path, sha256).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, Table, bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from temseg.segment import Particle
from temseg.store.schema import read_session, write_connection
from temseg.store.tables import FRAME_STATUSES, FrameRow, ParticleRow, utc_now

_FRAMES: Table = FrameRow.metadata.tables[FrameRow.__tablename__]
_PARTICLES: Table = ParticleRow.metadata.tables[ParticleRow.__tablename__]
# Core statements built once: the daemon runs them for every frame, and building a
# statement (and its cache key) cost more than running it.
_FRAME_ID = (
    select(_FRAMES.c.id)
    .where(_FRAMES.c.source_path == bindparam("path"), _FRAMES.c.sha256 == bindparam("sha"))
    .limit(1)
)
_RESULT_ID = (
    select(_FRAMES.c.id)
    .where(_FRAMES.c.sha256 == bindparam("sha"), _FRAMES.c.model_id == bindparam("model"))
    .order_by(_FRAMES.c.id)
    .limit(1)
)
_ROW_ID = select(_FRAMES.c.id).where(
    _FRAMES.c.source_path == bindparam("path"),
    _FRAMES.c.sha256 == bindparam("sha"),
    _FRAMES.c.model_id == bindparam("model"),
)
_MODELLESS_ID = (
    select(_FRAMES.c.id)
    .where(
        _FRAMES.c.source_path == bindparam("path"),
        _FRAMES.c.sha256 == bindparam("sha"),
        _FRAMES.c.model_id.is_(None),
    )
    .order_by(_FRAMES.c.id)
    .limit(1)
)
_RESULTS_OF_MODEL = select(_FRAMES.c.sha256).where(_FRAMES.c.model_id == bindparam("model"))
_INSERT_FRAME = insert(_FRAMES)
_INSERT_PARTICLES = insert(_PARTICLES)
#: The particle columns a frame's record fills, in the order of :func:`_particle_values`.
_PARTICLE_COLUMNS = (
    "frame_id",
    "label",
    "area_px",
    "equiv_diameter_px",
    "equiv_diameter_nm",
    "area_nm2",
    "centroid_y",
    "centroid_x",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
    "touches_border",
)


@dataclass(frozen=True)
class FrameRecord:
    """A recorded frame. Sizes in pixels, ``pixel_nm`` in nm per pixel,
    ``latency_ms`` from arrival to result, timestamps timezone-aware UTC."""

    id: int
    source_path: str
    sha256: str
    size_bytes: int
    status: str
    material: str | None
    error: str | None
    model_id: str | None
    threshold: float | None
    n_particles: int | None
    area_fraction: float | None
    mask_path: str | None
    height: int | None
    width: int | None
    pixel_nm: float | None
    seq: int | None
    received_at: datetime | None
    processed_at: datetime
    latency_ms: float | None
    backend: str | None
    instrument: str | None
    particles: tuple[Particle, ...]


def is_recorded(engine: Engine, source_path: str, sha256: str) -> bool:
    """Whether a frame with this path and content hash is already recorded (by any model)."""
    return _find_id(engine, source_path, sha256) is not None


def result_id(engine: Engine, sha256: str, model_id: str) -> int | None:
    """The id of a result of model ``model_id`` for content ``sha256`` (under any path;
    the first recorded), or ``None``."""
    with engine.connect() as conn:
        return conn.scalar(_RESULT_ID, {"sha": sha256, "model": model_id})


def recorded_contents(engine: Engine, model_id: str) -> set[str]:
    """The SHA-256 of every content with a result of model ``model_id`` (done or failed)."""
    with engine.connect() as conn:
        return set(conn.scalars(_RESULTS_OF_MODEL, {"model": model_id}))


def _find_id(engine: Engine, source_path: str, sha256: str) -> int | None:
    # A Core connection: the daemon asks this once per frame, and an ORM session's
    # set-up and tear-down cost more than the query.
    with engine.connect() as conn:
        return conn.scalar(_FRAME_ID, {"path": source_path, "sha": sha256})


def record_frame(
    engine: Engine,
    *,
    source_path: str,
    sha256: str,
    size_bytes: int,
    status: str,
    material: str | None = None,
    error: str | None = None,
    model_id: str | None = None,
    threshold: float | None = None,
    n_particles: int | None = None,
    area_fraction: float | None = None,
    mask_path: str | None = None,
    height: int | None = None,
    width: int | None = None,
    pixel_nm: float | None = None,
    seq: int | None = None,
    received_at: datetime | None = None,
    latency_ms: float | None = None,
    backend: str | None = None,
    instrument: str | None = None,
    particles: Sequence[Particle] = (),
) -> int:
    """Record a frame's result with its particles and return its id.

    Idempotent: if (``source_path``, ``sha256``, ``model_id``) is already
    recorded, nothing is written and the existing id is returned, also when
    another process records it at the same moment (the database's unique index
    decides). ``status`` is ``"done"`` or ``"failed"``; ``received_at`` must be
    timezone-aware; ``processed_at`` is set to now (UTC); ``instrument`` names the
    microscope.
    """
    if status not in FRAME_STATUSES:
        raise ValueError(f"status must be one of {FRAME_STATUSES}, got {status!r}")
    if received_at is not None and received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    values = {
        "source_path": source_path,
        "sha256": sha256,
        "size_bytes": int(size_bytes),
        "status": status,
        "material": material,
        "error": error,
        "model_id": model_id,
        "threshold": _opt_float(threshold),
        "n_particles": None if n_particles is None else int(n_particles),
        "area_fraction": _opt_float(area_fraction),
        "mask_path": mask_path,
        "height": None if height is None else int(height),
        "width": None if width is None else int(width),
        "pixel_nm": _opt_float(pixel_nm),
        "seq": None if seq is None else int(seq),
        "received_at": received_at,
        "processed_at": utc_now(),
        "latency_ms": _opt_float(latency_ms),
        "backend": backend,
        "instrument": instrument,
    }
    params: dict[str, str] = {"path": source_path, "sha": sha256}
    if model_id is None:
        lookup = _MODELLESS_ID
    else:
        lookup, params["model"] = _ROW_ID, model_id
    try:
        # Core, not the ORM: its unit of work doubled the cost of a frame's record.
        with write_connection(engine) as conn:
            existing = conn.scalar(lookup, params)
            if existing is not None:
                return int(existing)
            key = conn.execute(_INSERT_FRAME, values).inserted_primary_key
            assert key is not None
            frame_id = int(key[0])
            if particles:
                _insert_particles(conn, frame_id, particles)
            return frame_id
    except IntegrityError:
        # Another writer recorded the same row between our check and insert.
        with engine.connect() as conn:
            found = conn.scalar(lookup, params)
        if found is None:
            raise
        return int(found)


def recorded_paths(engine: Engine) -> set[tuple[str, str]]:
    """All recorded (source_path, sha256) pairs, to skip a backlog already done."""
    with read_session(engine) as session:
        rows = session.execute(select(FrameRow.source_path, FrameRow.sha256)).all()
    return {(path, digest) for path, digest in rows}


def get_frame(engine: Engine, frame_id: int) -> FrameRecord | None:
    """The recorded frame ``frame_id`` with its particles, or ``None``."""
    with read_session(engine) as session:
        row = session.scalar(
            select(FrameRow)
            .options(selectinload(FrameRow.particles))
            .where(FrameRow.id == frame_id)
        )
        return None if row is None else _frame_record(row)


def _frame_record(row: FrameRow) -> FrameRecord:
    """Plain copy of a loaded :class:`FrameRow` (particles must be loaded)."""
    return FrameRecord(
        id=row.id,
        source_path=row.source_path,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        status=row.status,
        material=row.material,
        error=row.error,
        model_id=row.model_id,
        threshold=row.threshold,
        n_particles=row.n_particles,
        area_fraction=row.area_fraction,
        mask_path=row.mask_path,
        height=row.height,
        width=row.width,
        pixel_nm=row.pixel_nm,
        seq=row.seq,
        received_at=row.received_at,
        processed_at=row.processed_at,
        latency_ms=row.latency_ms,
        backend=row.backend,
        instrument=row.instrument,
        particles=tuple(_particle(p) for p in row.particles),
    )


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _insert_particles(conn: Connection, frame_id: int, particles: Sequence[Particle]) -> None:
    """One executemany of the driver for the particles of frame ``frame_id``.

    The rows go to the driver as they are (after the column types' own
    conversions), not through SQLAlchemy's per-row parameter processing: for
    188 particles 0.8-1.2 ms instead of 2.4 ms on SQLite, most of it time the
    recorder held the GIL.
    """
    sql, order, converters = _driver_insert(conn.dialect)
    rows = [_particle_values(frame_id, p) for p in particles]
    for i, convert in converters:
        for row in rows:
            row[i] = convert(row[i])
    if order is None:  # named parameters
        conn.exec_driver_sql(sql, [dict(zip(_PARTICLE_COLUMNS, row, strict=True)) for row in rows])
    else:
        conn.exec_driver_sql(sql, [tuple(row[i] for i in order) for row in rows])


@functools.lru_cache(maxsize=8)
def _driver_insert(
    dialect: Dialect,
) -> tuple[str, tuple[int, ...] | None, tuple[tuple[int, Callable[[Any], Any]], ...]]:
    """The particles' INSERT in ``dialect``'s SQL; for positional parameters the
    :data:`_PARTICLE_COLUMNS` index of each (None: named by column); and the
    (index, converter) pairs the column types need (a boolean as 0/1 on SQLite)."""
    compiled = _INSERT_PARTICLES.compile(dialect=dialect, column_keys=list(_PARTICLE_COLUMNS))
    order = None
    if compiled.positional:
        order = tuple(_PARTICLE_COLUMNS.index(name) for name in compiled.positiontup or ())
    converters = tuple(
        (i, convert)
        for i, name in enumerate(_PARTICLE_COLUMNS)
        if (convert := _PARTICLES.c[name].type.bind_processor(dialect)) is not None
    )
    return str(compiled), order, converters


def _particle_values(frame_id: int, p: Particle) -> list[object]:
    """A particle's column values in :data:`_PARTICLE_COLUMNS` order."""
    y0, x0, y1, x1 = p.bbox
    return [
        frame_id,
        int(p.label),
        int(p.area_px),
        float(p.equiv_diameter_px),
        _opt_float(p.equiv_diameter_nm),
        _opt_float(p.area_nm2),
        float(p.centroid[0]),
        float(p.centroid[1]),
        int(y0),
        int(x0),
        int(y1),
        int(x1),
        bool(p.touches_border),
    ]


def _particle(row: ParticleRow) -> Particle:
    return Particle(
        label=row.label,
        area_px=row.area_px,
        centroid=(row.centroid_y, row.centroid_x),
        bbox=(row.bbox_y0, row.bbox_x0, row.bbox_y1, row.bbox_x1),
        equiv_diameter_px=row.equiv_diameter_px,
        touches_border=row.touches_border,
        area_nm2=row.area_nm2,
        equiv_diameter_nm=row.equiv_diameter_nm,
    )
