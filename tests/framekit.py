"""Helpers shared by the daemon tests and the fault-injection suite: writing frames the way
acquisition software does, fingerprinting files, reading the frames table."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any


def write_slowly(path: Path, data: bytes, chunks: int = 4, pause_s: float = 0.1) -> None:
    """Write ``data`` in chunks with pauses, as a camera streaming a frame to disk."""
    step = -(-len(data) // chunks)
    with open(path, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i : i + step])
            fh.flush()
            time.sleep(pause_s)


def write_renamed(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path.part`` and rename it into place, as acquisition software does."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    part.rename(path)


def fingerprint(path: Path) -> tuple[str, int]:
    """(SHA-256, mtime in ns) of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def frame_rows(db: Path | str) -> list[dict[str, Any]]:
    """Every row of the frames table, oldest first: a SQLite file with plain sqlite3, a
    server database given by its URL with SQLAlchemy (read-only use)."""
    if isinstance(db, str) and "://" in db:
        from sqlalchemy import create_engine, text

        engine = create_engine(db)
        try:
            with engine.connect() as server:
                rows = server.execute(text("SELECT * FROM frames ORDER BY id")).mappings()
                return [dict(r) for r in rows]
        finally:
            engine.dispose()
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM frames ORDER BY id")]
