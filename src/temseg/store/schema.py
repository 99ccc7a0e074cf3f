"""Open a database, create or upgrade its schema, refuse schemas we do not know.

SQLite connections get ``journal_mode=WAL`` (readers never wait for the
writer), ``busy_timeout`` (a writer waits for the lock instead of failing at
once), ``foreign_keys=ON`` and explicit transactions: write transactions start
with ``BEGIN IMMEDIATE`` so two writers queue on the lock instead of failing
on a read-to-write upgrade. A lock still held after ``busy_timeout`` surfaces
as :class:`sqlalchemy.exc.OperationalError`; callers decide whether to retry.

PostgreSQL (``postgresql+psycopg://``; a plain ``postgresql://`` URL gets the
psycopg 3 driver too) is shared by several daemons: its pool pings a
connection before handing it out, so one cut by a server restart is replaced
instead of failing the next statement, and schema creation and upgrades run
under a transaction-scoped advisory lock, so processes starting together on an
empty database create it once. A statement cut off mid-transaction still raises
:class:`sqlalchemy.exc.OperationalError` (retried by callers as for a locked
SQLite file; the writes are idempotent).
"""

from __future__ import annotations

import hashlib
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
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from temseg.store.tables import Base, SchemaInfo

SCHEMA_VERSION = 4
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
    full_url = database_url(url)
    database = full_url.database or ""
    cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if full_url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return DatabaseError(f"database {full_url.render_as_string(hide_password=True)}: {cause}")
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


class DriverError(SchemaError):
    """The database driver for a URL is not installed (the message names the extra)."""


def _advisory_key(name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks, derived from ``name``."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_SCHEMA_LOCK = _advisory_key("temseg schema")
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


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


# Version 3 columns of ``frames`` in table order: version 2's plus ``instrument``.
_FRAMES_V3_COLUMNS = (
    "id, source_path, sha256, size_bytes, material, status, error, model_id, threshold, "
    "n_particles, area_fraction, mask_path, height, width, pixel_nm, seq, received_at, "
    "processed_at, latency_ms, backend"
)
_FRAMES_V3_SQLITE = """
CREATE TABLE frames_v3 (
    id INTEGER NOT NULL, source_path TEXT NOT NULL, sha256 VARCHAR(64) NOT NULL,
    size_bytes INTEGER NOT NULL, material VARCHAR(64), status VARCHAR(16) NOT NULL, error TEXT,
    model_id VARCHAR(128), threshold FLOAT, n_particles INTEGER, area_fraction FLOAT,
    mask_path TEXT, height INTEGER, width INTEGER, pixel_nm FLOAT, seq INTEGER,
    received_at DATETIME, processed_at DATETIME NOT NULL, latency_ms FLOAT,
    backend VARCHAR(32), instrument VARCHAR(64),
    PRIMARY KEY (id),
    CONSTRAINT ck_frames_status CHECK (status IN ('done', 'failed'))
)
"""


def _upgrade_2_to_3(conn: Connection) -> None:
    """Version 3 makes a row a frame's result for a model: unique per (source_path,
    sha256, model_id) instead of (source_path, sha256), so a file may have results
    of several models (model-less failures stay unique per (source_path, sha256));
    lookups by (sha256, model_id) get an index; every row can name its
    ``instrument``. Every version 2 row satisfies the new keys.

    SQLite cannot drop a table constraint, so there the table is rebuilt (the
    caller runs SQLite upgrades with foreign keys off, as SQLite documents for
    this, and checks them before committing); ids, and so particles, are kept.
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(_FRAMES_V3_SQLITE)
        conn.exec_driver_sql(
            f"INSERT INTO frames_v3 ({_FRAMES_V3_COLUMNS}) SELECT {_FRAMES_V3_COLUMNS} FROM frames"
        )
        conn.exec_driver_sql("DROP TABLE frames")
        conn.exec_driver_sql("ALTER TABLE frames_v3 RENAME TO frames")
        conn.exec_driver_sql("CREATE INDEX ix_frames_processed_at ON frames (processed_at)")
    else:
        conn.execute(text("ALTER TABLE frames DROP CONSTRAINT uq_frames_source_sha256"))
        conn.execute(text("ALTER TABLE frames ADD COLUMN instrument VARCHAR(64)"))
    conn.execute(
        text("CREATE UNIQUE INDEX uq_frames_result ON frames (source_path, sha256, model_id)")
    )
    conn.execute(
        text(
            "CREATE UNIQUE INDEX uq_frames_modelless ON frames (source_path, sha256) "
            "WHERE model_id IS NULL"
        )
    )
    conn.execute(text("CREATE INDEX ix_frames_sha256_model ON frames (sha256, model_id)"))


def _upgrade_3_to_4(conn: Connection) -> None:
    """Version 4 records each 2-D frame of a stack: ``frame_index`` (0 for a single
    image) joins both unique keys, ``n_frames`` says how many frames the file holds,
    and the pixel size is kept per axis (``pixel_nm_y``, ``pixel_nm_x``). Existing
    rows are frame 0 of 1, with their ``pixel_nm`` on both axes."""
    conn.execute(text("ALTER TABLE frames ADD COLUMN frame_index INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE frames ADD COLUMN n_frames INTEGER NOT NULL DEFAULT 1"))
    conn.execute(text("ALTER TABLE frames ADD COLUMN pixel_nm_y FLOAT"))
    conn.execute(text("ALTER TABLE frames ADD COLUMN pixel_nm_x FLOAT"))
    conn.execute(text("UPDATE frames SET pixel_nm_y = pixel_nm, pixel_nm_x = pixel_nm"))
    conn.execute(text("DROP INDEX uq_frames_result"))
    conn.execute(text("DROP INDEX uq_frames_modelless"))
    conn.execute(
        text(
            "CREATE UNIQUE INDEX uq_frames_result "
            "ON frames (source_path, sha256, model_id, frame_index)"
        )
    )
    conn.execute(
        text(
            "CREATE UNIQUE INDEX uq_frames_modelless ON frames (source_path, sha256, frame_index) "
            "WHERE model_id IS NULL"
        )
    )


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _upgrade_1_to_2,
    2: _upgrade_2_to_3,
    3: _upgrade_3_to_4,
}
"""``MIGRATIONS[v]`` upgrades a version ``v`` database to version ``v + 1``.

A new version: bump :data:`SCHEMA_VERSION`, change the tables, and add a step
here written in plain DDL of that version (never derived from the current
tables, which will have moved on). Steps run in one transaction, in order.
"""


def sqlite_url(url: str | os.PathLike[str]) -> str:
    """``url`` unchanged if it is a SQLAlchemy URL, else ``sqlite:///<absolute path>``."""
    text_url = os.fspath(url)
    if "://" in text_url:
        return text_url
    return f"sqlite:///{Path(text_url).expanduser().resolve()}"


def database_url(url: str | os.PathLike[str]) -> URL:
    """The SQLAlchemy URL temseg connects to: a bare path is a SQLite file, and a
    ``postgresql://`` (or ``postgres://``) URL without a driver uses psycopg 3."""
    full = make_url(sqlite_url(url))
    if full.drivername in ("postgresql", "postgres"):
        full = full.set(drivername="postgresql+psycopg")
    return full


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
    missing SQLite file or the schema of an empty server database (for
    read-only tools such as ``temseg status``). A SQLite file whose folder
    does not exist, or that cannot be opened, raises :class:`DatabaseError`
    naming the file and the cause.
    """
    full_url = database_url(url)
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
    try:
        if is_sqlite:
            engine = create_engine(full_url)
            _configure_sqlite(engine, busy_timeout_ms)
        else:
            engine = create_engine(full_url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        psycopg = full_url.drivername.endswith("psycopg")
        extra = " (pip install 'temseg[postgres]')" if psycopg else ""
        raise DriverError(
            f"no driver for {full_url.render_as_string(hide_password=True)}: {exc}{extra}"
        ) from exc
    try:
        _ensure_schema(engine, create=create)
    except OperationalError as exc:
        engine.dispose()
        if not is_sqlite:
            raise  # a server's own message names host and cause
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


def _ensure_schema(engine: Engine, *, create: bool = True) -> None:
    with engine.connect() as conn, conn.begin():
        version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    if version is None and not create:
        url = engine.url.render_as_string(hide_password=True)
        raise FileNotFoundError(f"no temseg database at {url} (it has no tables)")
    if version is not None:
        _check_known(version)
    # Create or upgrade under the write lock (SQLite) or the schema's advisory lock
    # (PostgreSQL); re-read in case another process got there first.
    with engine.execution_options(**{_WRITE_OPTION: True}).connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        driver: Any = conn.connection.driver_connection
        if sqlite:  # outside a transaction, where SQLite honours it; restored below
            driver.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(_LOCK, {"key": _SCHEMA_LOCK})
                _create_or_upgrade(conn)
        finally:
            if sqlite:
                driver.execute("PRAGMA foreign_keys = ON")


def _create_or_upgrade(conn: Connection) -> None:
    version = schema_version(conn)
    if version is None:
        Base.metadata.create_all(conn)
        conn.execute(insert(SchemaInfo).values(version=SCHEMA_VERSION))
        return
    _check_known(version)
    for step in range(version, SCHEMA_VERSION):
        MIGRATIONS[step](conn)
    if conn.dialect.name == "sqlite":
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise SchemaError(f"upgrade would break {len(broken)} foreign key(s): {broken[:3]}")
    conn.execute(update(SchemaInfo).values(version=SCHEMA_VERSION))
