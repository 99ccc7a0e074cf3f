"""Fixtures of the fault-injection suite: an acquisition folder, a database, in-process daemons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from temseg.config import Settings
from temseg.daemon import Daemon


@pytest.fixture
def make_daemon(acq: Path, db_path: Path) -> Iterator[Any]:
    """Start in-process daemons on ``acq`` and ``db_path`` (bundled model, one CPU thread)."""
    started: list[Daemon] = []

    def make(db_busy_timeout_ms: int = 5000, **overrides: Any) -> Daemon:
        values: dict[str, Any] = {
            "watch": acq,
            "db": str(db_path),
            "publish": "tcp://127.0.0.1:0",
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
