"""DatabaseGuard: one daemon per database file; a deleted or replaced file is noticed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from temseg.daemon.db_guard import DatabaseGuard, DatabaseInUseError
from temseg.store import connect

REPO = Path(__file__).resolve().parents[1]


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    first = DatabaseGuard(str(db))
    first.acquire()
    try:
        with pytest.raises(DatabaseInUseError) as info:
            DatabaseGuard(f"sqlite:///{db}").acquire()
        assert str(db) in str(info.value) and f"pid {os.getpid()}" in str(info.value)
    finally:
        first.release()
    again = DatabaseGuard(str(db))
    again.acquire()  # free again once released
    again.release()


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    script = (
        "import os, sys\n"
        "from temseg.daemon.db_guard import DatabaseGuard\n"
        "DatabaseGuard(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\n"
        "os._exit(0)\n"  # no release: the kernel drops the lock
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(db)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=60,
    )
    assert done.stdout.strip() == "held", done.stderr
    guard = DatabaseGuard(str(db))
    guard.acquire()
    guard.release()


def test_a_deleted_or_replaced_database_file_is_noticed(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    connect(db).dispose()
    guard = DatabaseGuard(str(db))
    guard.remember()
    assert guard.problem() is None
    os.link(db, tmp_path / "kept")  # keep the inode in use, so a new file gets another
    db.unlink()
    problem = guard.problem()
    assert problem is not None and "deleted" in problem and str(db) in problem
    connect(db).dispose()
    problem = guard.problem()
    assert problem is not None and "replaced" in problem


def test_other_databases_are_not_guarded() -> None:
    guard = DatabaseGuard("postgresql://user@localhost/temseg")
    guard.acquire()
    guard.remember()
    assert guard.lock_path is None and guard.problem() is None
    guard.release()
