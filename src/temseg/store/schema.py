"""Open a database, create or upgrade its schema, refuse schemas we do not know.

SQLite connections get ``journal_mode=WAL`` (readers never wait for the
writer), ``busy_timeout`` (a writer waits for the lock instead of failing at
once), ``foreign_keys=ON`` and explicit transactions: write transactions start
with ``BEGIN IMMEDIATE`` so two writers queue on the lock instead of failing
on a read-to-write upgrade. A lock still held after ``busy_timeout`` surfaces
as :class:`sqlalchemy.exc.OperationalError`; callers decide whether to retry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from temseg.store.tables import Base, SchemaInfo

SCHEMA_VERSION = 2
"""Version written into new databases; older ones are upgraded to it."""

DEFAULT_BUSY_TIMEOUT_MS = 5000

_WRITE_OPTION = "temseg_write"


class SchemaError(RuntimeError):
    """The database holds a schema this version of temseg cannot use safely."""


class DatabaseError(RuntimeError):
    """The database cannot be opened or written; the message names it and why."""


def database_error(url: str | os.PathLike[str], exc: BaseException) -> DatabaseError:
    """A :class:`DatabaseError` for ``exc`` raised on ``url``, naming the file and the cause.

    SQLite says only "unable to open database file" or "attempt to write a
    readonly database"; the file system says which folder or file is at fault.
    """
    full_url = make_url(sqlite_url(url))
    database = full_url.database or ""
    cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if full_url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return DatabaseError(f"database {full_url.render_as_string()}: {cause}")
    path = Path(database)
    if not path.parent.is_dir():
        cause = f"folder {path.parent} does not exist"
    elif path.is_dir():
        cause = "it is a folder, not a file"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        cause = f"folder {path.parent} is not writable by this user ({cause})"
    elif path.exists() and not os.access(path, os.R_OK | os.W_OK):
        cause = f"the file is not readable and writable by this user ({cause})"
    return DatabaseError(f"cannot use database {path}: {cause}")


def _upgrade_1_to_2(conn: Connection) -> None:
    """Version 2 adds per-frame latency and backend, the calibration criterion
    and an index for time-window queries."""
    conn.execute(text("ALTER TABLE frames ADD COLUMN latency_ms FLOAT"))
    conn.execute(text("ALTER TABLE frames ADD COLUMN backend VARCHAR(32)"))
    conn.execute(
        text(
            "ALTER TABLE calibrations ADD COLUMN criterion VARCHAR(64) "
            "NOT NULL DEFAULT 'unspecified'"
        )
    )
    conn.execute(text("CREATE INDEX ix_frames_processed_at ON frames (processed_at)"))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _upgrade_1_to_2}
"""``MIGRATIONS[v]`` upgrades a version ``v`` database to version ``v + 1``."""


def sqlite_url(url: str | os.PathLike[str]) -> str:
    """``url`` unchanged if it is a SQLAlchemy URL, else ``sqlite:///<absolute path>``."""
    text_url = os.fspath(url)
    if "://" in text_url:
        return text_url
    return f"sqlite:///{Path(text_url).expanduser().resolve()}"


def connect(
    url: str | os.PathLike[str],
    *,
    create: bool = True,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> Engine:
    """Engine for ``url`` (a SQLAlchemy URL or a bare SQLite file path) with a
    current schema.

    A new database gets the current schema; an older temseg schema is upgraded
    in one transaction; a newer or unknown one raises :class:`SchemaError`.
    ``create=False`` raises :class:`FileNotFoundError` instead of creating a
    missing SQLite file (for read-only tools such as ``temseg status``). A
    SQLite file whose folder does not exist, or that cannot be opened,
    raises :class:`DatabaseError` naming the file and the cause.
    """
    full_url = make_url(sqlite_url(url))
    is_sqlite = full_url.get_backend_name() == "sqlite"
    database = full_url.database or ""
    if is_sqlite and database not in ("", ":memory:") and not database.startswith("file:"):
        path = Path(database)
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"no temseg database at {path}")
            if not path.parent.is_dir():
                raise DatabaseError(
                    f"cannot create database {path}: folder {path.parent} does not exist "
                    "(create it first, or choose another --db)"
                )
    engine = create_engine(full_url)
    if is_sqlite:
        _configure_sqlite(engine, busy_timeout_ms)
    try:
        _ensure_schema(engine)
    except OperationalError as exc:
        engine.dispose()
        raise database_error(url, exc) from exc
    except BaseException:
        engine.dispose()
        raise
    return engine


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, so DDL is transactional too.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A short read transaction."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A short write transaction, committed on exit (SQLite: ``BEGIN IMMEDIATE``)."""
    writer = engine.execution_options(**{_WRITE_OPTION: True})
    with Session(writer, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """:func:`write_session` on a Core connection, for statements that need no ORM."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})  # read by the "begin" event
        with conn.begin():
            yield conn


def schema_version(conn: Connection) -> int | None:
    """The stored schema version, ``None`` for an empty database.

    Raises :class:`SchemaError` for tables without a readable version.
    """
    tables = set(inspect(conn).get_table_names())
    if not tables:
        return None
    if "schema_info" not in tables:
        raise SchemaError(
            f"database has tables {sorted(tables)} but no schema_info: not a temseg database"
        )
    versions = conn.execute(select(SchemaInfo.version)).scalars().all()
    if len(versions) != 1:
        raise SchemaError(f"schema_info must hold exactly one version, found {versions}")
    return int(versions[0])


def _check_known(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"database schema version {version} is newer than this temseg supports "
            f"({SCHEMA_VERSION}); upgrade temseg to use it"
        )
    if version < 1 or any(v not in MIGRATIONS for v in range(version, SCHEMA_VERSION)):
        raise SchemaError(f"unknown database schema version {version}")


def _ensure_schema(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    if version is not None:
        _check_known(version)
    # Create or upgrade under the write lock; re-read in case another process got there first.
    with engine.execution_options(**{_WRITE_OPTION: True}).connect() as conn, conn.begin():
        version = schema_version(conn)
        if version is None:
            Base.metadata.create_all(conn)
            conn.execute(insert(SchemaInfo).values(version=SCHEMA_VERSION))
            return
        _check_known(version)
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](conn)
        conn.execute(update(SchemaInfo).values(version=SCHEMA_VERSION))
