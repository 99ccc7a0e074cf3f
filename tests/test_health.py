"""Health that means progress: a wedged pipeline fails /healthz and stops the watchdog pings."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from framekit import write_renamed
from test_daemon import tiff_bytes
from test_metrics import finished, get, scrape
from test_viewer import wait_for

from temseg.config import Settings
from temseg.daemon import Daemon, Notifier
from temseg.daemon.events import FrameEvent
from temseg.daemon.progress import Progress

STUCK_AFTER_S = 1.0
WATCHDOG_USEC = 200_000  # a ping every 0.1 s while healthy


class DatabaseLock:
    """An exclusive lock on a SQLite file, held by another connection: every daemon thread
    that needs the database waits in it (a reader cannot wedge on a FIFO any more: it is
    refused at once, see ``test_safe_read.py``)."""

    def __init__(self, path: Path) -> None:
        self._conn: sqlite3.Connection | None = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None


def pings(server: socket.socket, window_s: float) -> int:
    """WATCHDOG=1 datagrams received on ``server`` during ``window_s`` seconds."""
    count, deadline = 0, time.monotonic() + window_s
    while (remaining := deadline - time.monotonic()) > 0:
        server.settimeout(remaining)
        try:
            count += server.recv(4096) == b"WATCHDOG=1"
        except TimeoutError:
            break
    return count


def drain(server: socket.socket) -> None:
    server.setblocking(False)
    try:
        while True:
            server.recv(4096)
    except BlockingIOError:
        pass


def test_a_frame_that_never_moves_fails_healthz_and_stops_the_watchdog(
    acq: Path, tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(notify_path))
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    settings = Settings(
        watch=acq,
        db=str(tmp_path / "t.db"),
        publish="tcp://127.0.0.1:0",
        metrics="127.0.0.1:0",
        stuck_after_s=STUCK_AFTER_S,
        threads=1,
        stable_s=0.3,
    )
    daemon = Daemon(settings, notifier=notifier)
    lock: DatabaseLock | None = None
    try:
        daemon.start()
        url = daemon.metrics_url
        assert url is not None
        write_renamed(acq / "ok.tif", tiff_bytes(1))
        assert finished(daemon, 1)
        time.sleep(STUCK_AFTER_S + 0.2)  # idle for longer than stuck_after_s: still healthy
        assert get(url + "/healthz") == 200
        assert pings(server, 0.5) >= 1

        lock = DatabaseLock(tmp_path / "t.db")
        started = time.monotonic()
        write_renamed(acq / "wedged.tif", tiff_bytes(2))  # its reader waits for the database
        while get(url + "/healthz") == 200 and time.monotonic() - started < STUCK_AFTER_S + 10:
            time.sleep(0.05)
        assert get(url + "/healthz") == 503
        assert time.monotonic() - started > STUCK_AFTER_S
        assert get(url + "/readyz") == 200  # wedged is not unready: systemd restarts it
        time.sleep(2 * WATCHDOG_USEC / 1e6)  # a ping decided before the wedge shows has come
        drain(server)
        assert pings(server, 1.0) == 0
        samples = scrape(url)
        assert samples[("temseg_stalled_seconds", ())] > STUCK_AFTER_S
        assert samples[("temseg_seconds_behind", ())] > STUCK_AFTER_S
        assert samples[("temseg_frames_in_flight", ())] == 1

        # The database is free again: the frame moves on and is recorded.
        lock.release()
        assert finished(daemon, 2)
        assert get(url + "/healthz") == 200
        assert pings(server, 1.0) >= 1
        assert daemon.stats.failed == 0
    finally:
        if lock is not None:
            lock.release()
        daemon.stop()
        server.close()


def event(kind: str, ticket: int, latency_s: float = 0.0) -> FrameEvent:
    return FrameEvent(
        kind=kind,  # type: ignore[arg-type]
        path=Path("/acq/a.tif"),
        relative_path="a.tif",
        ticket=ticket,
        latency_s=latency_s,
    )


def test_progress_counts_the_frame_that_moved_least_recently() -> None:
    progress = Progress()
    assert not progress.wedged(0.01) and progress.seconds_behind() == 0
    progress(event("received", 0, latency_s=5.0))  # detected 5 s ago
    progress(event("received", 1))
    assert progress.in_flight == 2
    assert 5.0 <= progress.seconds_behind() < 6.0
    time.sleep(0.05)
    progress(event("read", 1))
    assert progress.wedged(0.04)  # ticket 0 has not moved since it was received
    progress(event("read", 0))
    assert not progress.wedged(0.04)
    progress(event("recorded", 0))
    assert progress.seconds_behind() < 1.0  # ticket 1 only, detected just now
    progress(event("published", 0))
    progress(event("skipped", 1))
    assert progress.in_flight == 0 and progress.stalled_s() == 0 and progress.seconds_behind() == 0


def test_readyz_is_503_while_stopping(make_daemon: Any, acq: Path, db_path: Path) -> None:
    daemon = make_daemon()
    url = daemon.metrics_url
    assert get(url + "/readyz") == 200
    lock = DatabaseLock(db_path)
    write_renamed(acq / "held.tif", tiff_bytes(3))  # holds stopping until the database is free
    assert wait_for(lambda: daemon.pending == 1, 30)
    stopper = threading.Thread(target=daemon.stop)
    stopper.start()
    try:
        assert wait_for(lambda: get(url + "/readyz") == 503, 30)
        assert get(url + "/healthz") == 503  # not accepting frames any more
    finally:
        lock.release()
        stopper.join(60)
    assert not stopper.is_alive() and daemon.stats.failed == 0
