"""ORM tables of the temseg database (SQLAlchemy 2, typed ``Mapped`` columns).

These classes are internal: the public functions of :mod:`temseg.store`
return frozen dataclasses, never live ORM objects. All timestamps are stored
as naive UTC and read back as timezone-aware UTC (:class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

FRAME_STATUSES = ("done", "failed")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC ``datetime`` in Python, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value.isoformat()} must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class SchemaInfo(Base):
    """One row: the schema version of this database."""

    __tablename__ = "schema_info"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class FrameRow(Base):
    """A frame's result for a model: one row per (source_path, sha256, model_id),
    whether the daemon recorded it live or ``temseg reprocess`` did later.

    Work is skipped by (sha256, model_id): content a model already has a result
    for, under any path, is not segmented by it again. ``instrument`` names the
    microscope whose daemon recorded the row. A failure before any model ran
    (unreadable file) has ``model_id`` ``None`` and is unique per
    (source_path, sha256).
    """

    __tablename__ = "frames"
    __table_args__ = (
        CheckConstraint("status IN ('done', 'failed')", name="ck_frames_status"),
        Index("ix_frames_processed_at", "processed_at"),
        Index("uq_frames_result", "source_path", "sha256", "model_id", unique=True),
        Index(
            "uq_frames_modelless",
            "source_path",
            "sha256",
            unique=True,
            sqlite_where=text("model_id IS NULL"),
            postgresql_where=text("model_id IS NULL"),
        ),
        Index("ix_frames_sha256_model", "sha256", "model_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    material: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[str | None] = mapped_column(String(128))
    threshold: Mapped[float | None] = mapped_column(Float)
    n_particles: Mapped[int | None] = mapped_column(Integer)
    area_fraction: Mapped[float | None] = mapped_column(Float)
    mask_path: Mapped[str | None] = mapped_column(Text)
    height: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    pixel_nm: Mapped[float | None] = mapped_column(Float)
    seq: Mapped[int | None] = mapped_column(Integer)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    backend: Mapped[str | None] = mapped_column(String(32))
    instrument: Mapped[str | None] = mapped_column(String(64))

    particles: Mapped[list[ParticleRow]] = relationship(
        back_populates="frame", cascade="all, delete-orphan", order_by="ParticleRow.label"
    )


class ParticleRow(Base):
    """One connected particle of a frame's mask (pixel coordinates: row y, column x)."""

    __tablename__ = "particles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"), index=True)
    label: Mapped[int] = mapped_column(Integer)
    area_px: Mapped[int] = mapped_column(Integer)
    equiv_diameter_px: Mapped[float] = mapped_column(Float)
    equiv_diameter_nm: Mapped[float | None] = mapped_column(Float)
    area_nm2: Mapped[float | None] = mapped_column(Float)
    centroid_y: Mapped[float] = mapped_column(Float)
    centroid_x: Mapped[float] = mapped_column(Float)
    bbox_y0: Mapped[int] = mapped_column(Integer)
    bbox_x0: Mapped[int] = mapped_column(Integer)
    bbox_y1: Mapped[int] = mapped_column(Integer)
    bbox_x1: Mapped[int] = mapped_column(Integer)
    touches_border: Mapped[bool] = mapped_column(Boolean)

    frame: Mapped[FrameRow] = relationship(back_populates="particles")


class ModelRow(Base):
    """A registered model bundle; at most one row has ``active`` true."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=False)


# A partial unique index: the database itself refuses a second active model.
Index(
    "uq_models_one_active",
    ModelRow.active,
    unique=True,
    sqlite_where=ModelRow.active,
    postgresql_where=ModelRow.active,
)


class CalibrationRow(Base):
    """One threshold calibration of a model on a material's labelled images."""

    __tablename__ = "calibrations"
    __table_args__ = (Index("ix_calibrations_material_model", "material", "model_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    material: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(String(128))
    threshold: Mapped[float] = mapped_column(Float)
    precision: Mapped[float] = mapped_column(Float)
    recall: Mapped[float] = mapped_column(Float)
    dice: Mapped[float] = mapped_column(Float)
    n_images: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    curve: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    plot_path: Mapped[str | None] = mapped_column(Text)
    criterion: Mapped[str] = mapped_column(String(64))
