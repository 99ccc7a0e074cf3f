"""The database becomes unusable for a while: locked by another process, on a full disk,
or a PostgreSQL server restarting; and several daemons share one server.

Frames must wait and be retried, the daemon must log it and keep running,
and once the lock is released or space freed every frame is recorded once.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import (
    DaemonProcess,
    assert_recorded_once,
    count_rows,
    integrity,
    scaled,
    tiff_bytes,
    wait_for,
)
from framekit import frame_rows, write_renamed
from sqlalchemy import create_engine, text

# Holds a write lock until told to release it on stdin.
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
"""


def write_frames(folder: Path, prefix: str, seeds: range) -> dict[Path, str]:
    """Write one frame per seed (renamed into place); return path -> SHA-256."""
    written = {}
    for seed in seeds:
        data = tiff_bytes(seed)
        path = folder / f"{prefix}_{seed:04d}.tif"
        write_renamed(path, data)
        written[path] = hashlib.sha256(data).hexdigest()
    return written


@pytest.mark.slow
def test_database_locked_by_another_process(
    make_daemon, acq: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hold_s = scaled(3, 10)
    n = scaled(20, 200)
    daemon = make_daemon(db_busy_timeout_ms=100, queue_size=4, batch_size=2)
    busy = "database busy during record"
    with caplog.at_level(logging.WARNING, logger="temseg.daemon"):
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(db_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert locker.stdout is not None and locker.stdin is not None
            assert locker.stdout.readline().strip() == "locked"
            locked_at = time.monotonic()
            expected = write_frames(acq, "locked", range(n))
            assert wait_for(lambda: any(busy in r.getMessage() for r in caplog.records), 30)
            assert count_rows(db_path) == 0  # readers still read; no frame got in
            time.sleep(max(0.0, hold_s - (time.monotonic() - locked_at)))
            assert daemon.healthy() and daemon.pending > 0  # waiting, not dropping
            locker.stdin.write("release\n")
            locker.stdin.flush()
            assert locker.wait(timeout=30) == 0
        finally:
            if locker.poll() is None:
                locker.kill()
                locker.wait()
        assert wait_for(lambda: count_rows(db_path) >= n, scaled(60, 300))
    expected |= write_frames(acq, "after", range(n, n + 3))  # and it keeps going
    assert wait_for(lambda: count_rows(db_path) >= n + 3, 60)
    assert daemon.wait_idle(30) and daemon.healthy()
    stats = daemon.stop()
    rows = frame_rows(db_path)
    assert_recorded_once(rows, expected)
    assert {r["status"] for r in rows} == {"done"} and stats.failed == 0
    assert integrity(db_path) == "ok"
    retries = sum(busy in r.getMessage() for r in caplog.records)
    print(f"\n{n} frames waited {hold_s} s for the lock ({retries} retries logged), all recorded")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test (needs root; skipped where mounting is not allowed)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path) -> int:
    """Write zeros to ``path`` until the file system is full; return the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as fh:
        for chunk in (b"\0" * (1 << 16), b"\0" * 4096, b"\0"):
            try:
                while True:
                    written += fh.write(chunk) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return written


@pytest.mark.slow
def test_database_on_a_full_disk(small_disk: Path, acq: Path) -> None:
    db = small_disk / "temseg.db"
    n = scaled(10, 100)
    full_s = scaled(3, 10)
    daemon = DaemonProcess(
        "--watch", str(acq),
        "--db", str(db),
        "--publish", "tcp://127.0.0.1:0",
        "--threads", "1",
    )  # fmt: skip
    try:
        daemon.wait_line(" ready ")
        expected = write_frames(acq, "before", range(3))
        assert wait_for(lambda: count_rows(db) >= 3, 60)

        filler = small_disk / "filler"
        assert fill(filler) > 0
        expected |= write_frames(acq, "full", range(3, 3 + n))
        daemon.wait_line("database or disk is full")  # logged and retried
        time.sleep(full_s)  # the disk stays full a while
        assert count_rows(db) == 3
        assert daemon.proc.poll() is None  # still running

        filler.unlink()  # space freed: the waiting frames go in
        assert wait_for(lambda: count_rows(db) >= 3 + n, 60)
        expected |= write_frames(acq, "after", range(3 + n, 6 + n))
        assert wait_for(lambda: count_rows(db) >= 6 + n, 60)
        assert daemon.terminate() == 0
    finally:
        daemon.close()
    rows = frame_rows(db)
    assert_recorded_once(rows, expected)
    assert {r["status"] for r in rows} == {"done"}
    assert integrity(db) == "ok"
    retries = sum("database or disk is full" in line for line in daemon.lines)
    print(f"\n{n} frames waited {full_s} s for disk space ({retries} retries logged), all recorded")


def test_stop_gives_up_on_a_database_still_locked_after_stop_timeout(
    make_daemon, acq: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = make_daemon(db_busy_timeout_ms=100, stop_timeout_s=1.0)
    frame = acq / "while_locked.tif"
    locker = sqlite3.connect(db_path, isolation_level=None)
    try:
        with caplog.at_level(logging.WARNING, logger="temseg.daemon"):
            locker.execute("BEGIN IMMEDIATE")  # an open write transaction: no writer gets in
            write_renamed(frame, tiff_bytes(21))
            busy = "database busy during record"
            assert wait_for(lambda: any(busy in r.getMessage() for r in caplog.records), 30)
            stopping = threading.Thread(target=daemon.stop, daemon=True)
            stopping.start()
            stopping.join(30)  # 1 s, one busy timeout and one back-off: far less than this
            assert not stopping.is_alive(), "stop() kept waiting for the locked database"
        assert daemon.stats.abandoned == 1 and daemon.stats.done == 0
        gave_up = [r for r in caplog.records if "stop gave up" in r.getMessage()]
        assert len(gave_up) == 1 and gave_up[0].levelno == logging.ERROR
        assert "1 accepted frame(s) not recorded" in gave_up[0].getMessage()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert count_rows(db_path) == 0  # nothing half-written
    restarted = make_daemon()  # the next start's backlog finds the frame
    assert restarted.wait_idle(30) and restarted.stats.backlog == 1
    rows = frame_rows(db_path)
    assert [(r["source_path"], r["status"]) for r in rows] == [(str(frame), "done")]


def test_daemon_exits_non_zero_when_stopping_gives_up_on_the_database(
    acq: Path, db_path: Path
) -> None:
    daemon = DaemonProcess(
        "--watch", str(acq),
        "--db", str(db_path),
        "--publish", "tcp://127.0.0.1:0",
        "--threads", "1",
        env={"TEMSEG_STOP_TIMEOUT_S": "1"},
    )  # fmt: skip
    locker: sqlite3.Connection | None = None
    try:
        daemon.wait_line(" ready ")
        locker = sqlite3.connect(db_path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        write_renamed(acq / "while_locked.tif", tiff_bytes(22))
        daemon.wait_line("database busy during record")
        assert daemon.terminate(timeout_s=60) == 1
        assert daemon.logged("stop gave up")
    finally:
        daemon.close()
        if locker is not None:
            locker.execute("ROLLBACK")
            locker.close()
    assert count_rows(db_path) == 0


# ---------------------------------------------------------------- PostgreSQL


def server_rows(url: str) -> list[dict[str, Any]]:
    """Every row of the frames table of a server database, oldest first."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execute(text("SELECT * FROM frames ORDER BY id")).mappings().all()
            return [dict(r) for r in result]
    finally:
        engine.dispose()


def server_count(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM frames")).scalar_one())
    except Exception:  # no schema yet, or the server restarting
        return 0
    finally:
        engine.dispose()


@pytest.mark.slow
def test_two_daemons_share_one_postgresql_database(
    make_daemon, pg_url: str, tmp_path: Path
) -> None:
    n = scaled(8, 100)
    folders = [tmp_path / "titan", tmp_path / "talos"]
    daemons = []
    for folder in folders:
        folder.mkdir()
        # Both start on the empty database at once: the schema is created once.
        daemons.append(make_daemon(watch=folder.resolve(), db=pg_url))
    expected: dict[Path, str] = {}
    for k, folder in enumerate(folders):
        expected |= write_frames(folder.resolve(), folder.name, range(k * n, (k + 1) * n))
    assert wait_for(lambda: server_count(pg_url) >= 2 * n, scaled(120, 600))
    for daemon in daemons:
        assert daemon.wait_idle(30) and daemon.healthy()
    stats = [daemon.stop() for daemon in daemons]
    rows = server_rows(pg_url)
    assert_recorded_once(rows, expected)
    assert {r["status"] for r in rows} == {"done"} and sum(s.failed for s in stats) == 0
    for folder in folders:
        assert sum(str(r["source_path"]).startswith(str(folder)) for r in rows) == n


@pytest.mark.slow
def test_postgresql_restart_during_a_burst(
    make_daemon, pg_server, pg_url: str, acq: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if pg_server.data is None:
        pytest.skip("an external server (TEMSEG_TEST_POSTGRES_URL) is not restarted by tests")
    n = scaled(30, 300)
    daemon = make_daemon(db=pg_url, queue_size=4, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="temseg.daemon"):
        expected = write_frames(acq, "burst", range(n))
        assert wait_for(lambda: server_count(pg_url) >= 3, 60)
        pg_server.restart("immediate")  # as after a crash: every connection cut
        restarted_at = server_count(pg_url)
        assert wait_for(lambda: server_count(pg_url) >= n, scaled(120, 600))
    expected |= write_frames(acq, "after", range(n, n + 3))  # and it keeps going
    assert wait_for(lambda: server_count(pg_url) >= n + 3, 60)
    assert daemon.wait_idle(30) and daemon.healthy()
    stats = daemon.stop()
    rows = server_rows(pg_url)
    assert_recorded_once(rows, expected)
    assert {r["status"] for r in rows} == {"done"} and stats.failed == 0
    retries = sum("database busy" in r.getMessage() for r in caplog.records)
    print(f"\nserver restarted after {restarted_at} of {n} frames ({retries} retries logged)")
