"""temseg.store: the results database (SQLAlchemy 2; SQLite by default).

Plain functions taking a :class:`sqlalchemy.Engine`; each opens its own short
transaction and returns frozen dataclasses, never live ORM objects. All
timestamps are timezone-aware UTC. A SQLite database stays locked for longer
than ``busy_timeout_ms`` -> :class:`sqlalchemy.exc.OperationalError` (retry).

Connect::

    connect(url, *, create=True, busy_timeout_ms=5000) -> Engine
        url: "sqlite:///path.db", a bare file path, or
        "postgresql+psycopg://user@host/db" (psycopg 3: temseg[postgres]).
        Creates the schema (a SQLite file's folder must exist), sets WAL +
        busy_timeout, upgrades an older schema, raises SchemaError on a
        newer/unknown one (DriverError, a SchemaError, when the URL's driver
        is missing) and DatabaseError (naming file and cause) when a SQLite
        file cannot be created or opened.
        PostgreSQL: pool pre-ping; creation/upgrade under an advisory lock.
        create=False: FileNotFoundError instead of creating a missing database.
    database_error(url, exc) -> DatabaseError  # the same message for a later failure
    SCHEMA_VERSION: int ; SchemaError(RuntimeError) ; DriverError(SchemaError)
    DatabaseError(RuntimeError)

Frames: a frame's result for a model, idempotent on (source_path, sha256, model_id)
(model-less failures: on (source_path, sha256)); work left is asked by content::

    record_frame(engine, *, source_path, sha256, size_bytes, status,  # "done" | "failed"
                 material=None, error=None, model_id=None, threshold=None,
                 n_particles=None, area_fraction=None, mask_path=None,
                 height=None, width=None, pixel_nm=None, seq=None,
                 received_at=None,  # aware datetime
                 latency_ms=None, backend=None, instrument=None,
                 particles: Sequence[temseg.segment.Particle] = ()) -> int  # frame id
    is_recorded(engine, source_path, sha256) -> bool    # by any model
    result_id(engine, sha256, model_id) -> int | None   # under any path
    recorded_contents(engine, model_id) -> set[str]     # sha256 with a result of the model
    recorded_paths(engine) -> set[tuple[str, str]]      # (source_path, sha256)
    get_frame(engine, frame_id) -> FrameRecord | None   # .particles: tuple[Particle, ...]

Models (at most one active)::

    register_model(engine, model_id, name, path, metadata: Mapping) -> None  # idempotent
    promote_model(engine, model_id) -> None    # unknown id -> KeyError
    active_model(engine) -> ModelRecord | None
    active_model_id(engine) -> str | None       # the same, id only (cheap)
    list_models(engine) -> list[ModelRecord]

Calibrations::

    record_calibration(engine, *, material, model_id, threshold, precision, recall,
                       dice, n_images, curve: Mapping, plot_path, criterion) -> int
    latest_calibration(engine, material, model_id) -> CalibrationRecord | None
    latest_threshold(engine, material, model_id) -> float | None  # its threshold only
    latest_thresholds(engine, model_id) -> dict[str, float]  # per material

Status::

    status_summary(engine, window_minutes=10, now=None) -> dict  # JSON-ready

Tables and the migration mechanism are described in ``docs/database.md``.
"""

from temseg.store.calibrations import (
    CalibrationRecord,
    latest_calibration,
    latest_threshold,
    latest_thresholds,
    record_calibration,
)
from temseg.store.frames import (
    FrameRecord,
    get_frame,
    is_recorded,
    record_frame,
    recorded_contents,
    recorded_paths,
    result_id,
)
from temseg.store.models import (
    ModelRecord,
    active_model,
    active_model_id,
    list_models,
    promote_model,
    register_model,
)
from temseg.store.schema import (
    SCHEMA_VERSION,
    DatabaseError,
    DriverError,
    SchemaError,
    connect,
    database_error,
)
from temseg.store.summary import status_summary

__all__ = [
    "SCHEMA_VERSION",
    "CalibrationRecord",
    "DatabaseError",
    "DriverError",
    "FrameRecord",
    "ModelRecord",
    "SchemaError",
    "active_model",
    "active_model_id",
    "connect",
    "database_error",
    "get_frame",
    "is_recorded",
    "latest_calibration",
    "latest_threshold",
    "latest_thresholds",
    "list_models",
    "promote_model",
    "record_calibration",
    "record_frame",
    "recorded_contents",
    "recorded_paths",
    "register_model",
    "result_id",
    "status_summary",
]
