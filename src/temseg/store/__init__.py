"""temseg.store: the results database (SQLAlchemy 2; SQLite by default, PostgreSQL with
``temseg[postgres]``).

Plain functions taking a :class:`sqlalchemy.Engine` from :func:`connect`; each opens
its own short transaction and returns frozen dataclasses, never live ORM objects. All
timestamps are timezone-aware UTC. A database still locked (SQLite) or unreachable
(PostgreSQL) past its timeout raises :class:`sqlalchemy.exc.OperationalError`: callers
retry, and every write is idempotent. A frame's result is one row per (source_path,
sha256, model_id, frame_index). The functions are listed in ``__all__`` and documented
in their docstrings; tables, keys and the migration mechanism in ``docs/database.md``.
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
    recorded_frames,
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
    "recorded_frames",
    "recorded_paths",
    "register_model",
    "result_id",
    "status_summary",
]
