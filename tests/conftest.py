"""Shared test set-up: private caches, an acquisition folder, a database path, daemons,
a PostgreSQL server (see ``pgkit``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgkit
import pytest

from temseg.config import Settings
from temseg.daemon import Daemon


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point ``XDG_CACHE_HOME`` (ONNX exports, engine plans) at a temporary folder."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def acq(tmp_path: Path) -> Path:
    """An empty acquisition folder (resolved path)."""
    folder = tmp_path / "acq"
    folder.mkdir()
    return folder.resolve()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's SQLite database goes (its folder exists, the file does not yet)."""
    (tmp_path / "state").mkdir()
    return tmp_path / "state" / "temseg.db"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgkit.PgServer]:
    """A PostgreSQL server for the whole session (skips, saying why, when none can run)."""
    try:
        server = pgkit.start_server()
    except pgkit.Unavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    pgkit.stop_server(server)


@pytest.fixture
def pg_url(pg_server: pgkit.PgServer) -> Iterator[str]:
    """URL of a new, empty PostgreSQL database (dropped after the test)."""
    yield from pgkit.database(pg_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database URL on each kind of server: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        (tmp_path / "state").mkdir()
        return f"sqlite:///{tmp_path / 'state' / 'temseg.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def make_daemon(acq: Path, db_path: Path) -> Iterator[Any]:
    """Start in-process daemons on ``acq`` and ``db_path`` (bundled model, one CPU thread)."""
    started: list[Daemon] = []

    def make(db_busy_timeout_ms: int = 5000, **overrides: Any) -> Daemon:
        values: dict[str, Any] = {
            "watch": acq,
            "db": str(db_path),
            "publish": "tcp://127.0.0.1:0",
            "metrics": "127.0.0.1:0",
            "stable_s": 0.3,
            "threads": 1,
        }
        values.update(overrides)
        daemon = Daemon(Settings(**values), db_busy_timeout_ms=db_busy_timeout_ms)
        daemon.start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()
