"""Registry of model bundles: register, promote one to active, look them up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update

from temseg.store.schema import read_session, write_session
from temseg.store.tables import ModelRow, utc_now

_ACTIVE_ID = select(ModelRow.id).where(ModelRow.active)  # built once


@dataclass(frozen=True)
class ModelRecord:
    """A registered model bundle; ``path`` is the bundle directory."""

    model_id: str
    name: str
    path: str
    created_at: datetime
    metadata: dict[str, Any]
    active: bool


def register_model(
    engine: Engine, model_id: str, name: str, path: str, metadata: Mapping[str, Any]
) -> None:
    """Add a model, or update name, path and metadata of an already registered
    ``model_id`` (its ``created_at`` and ``active`` flag are kept)."""
    with write_session(engine) as session:
        row = session.get(ModelRow, model_id)
        if row is None:
            session.add(
                ModelRow(
                    id=model_id,
                    name=name,
                    path=str(path),
                    created_at=utc_now(),
                    meta=dict(metadata),
                    active=False,
                )
            )
        else:
            row.name, row.path, row.meta = name, str(path), dict(metadata)


def promote_model(engine: Engine, model_id: str) -> None:
    """Make ``model_id`` the only active model. Unknown id: :class:`KeyError`."""
    with write_session(engine) as session:
        row = session.get(ModelRow, model_id)
        if row is None:
            known = session.scalars(select(ModelRow.id).order_by(ModelRow.created_at)).all()
            raise KeyError(
                f"no registered model {model_id!r}; registered: {', '.join(known) or 'none'}"
            )
        session.execute(
            update(ModelRow).where(ModelRow.active, ModelRow.id != model_id).values(active=False)
        )
        session.flush()
        row.active = True


def active_model(engine: Engine) -> ModelRecord | None:
    """The active model, or ``None`` if none was promoted."""
    with read_session(engine) as session:
        row = session.scalar(select(ModelRow).where(ModelRow.active))
        return None if row is None else _record(row)


def active_model_id(engine: Engine) -> str | None:
    """The id of the active model, or ``None``: what :func:`active_model` finds, cheaply.

    A Core connection, not an ORM session: the daemon asks every time it
    checks the database for a new active model.
    """
    with engine.connect() as conn:
        return conn.scalar(_ACTIVE_ID)


def list_models(engine: Engine) -> list[ModelRecord]:
    """All registered models, oldest first."""
    with read_session(engine) as session:
        rows = session.scalars(select(ModelRow).order_by(ModelRow.created_at, ModelRow.id)).all()
        return [_record(row) for row in rows]


def _record(row: ModelRow) -> ModelRecord:
    return ModelRecord(
        model_id=row.id,
        name=row.name,
        path=row.path,
        created_at=row.created_at,
        metadata=dict(row.meta or {}),
        active=bool(row.active),
    )
