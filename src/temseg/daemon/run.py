"""Running the daemon in the foreground: until a stop signal, or until it must stop.

:func:`serve` is what ``temseg daemon`` runs; :func:`run_daemon` the same with a
stop event of the caller's (e.g. a test's thread).
"""

from __future__ import annotations

import threading

from temseg.config import Settings
from temseg.daemon.lifecycle import Notifier, install_stop_signals
from temseg.daemon.observers import DaemonStats
from temseg.daemon.service import Daemon, DatabaseGone

#: Seconds between the main thread's checks for a stop signal (see :func:`run_daemon`).
STOP_POLL_S = 0.2


def run_daemon(
    settings: Settings,
    *,
    stop_event: threading.Event,
    ready: threading.Event | None = None,
    notifier: Notifier | None = None,
) -> DaemonStats:
    """Run the daemon until ``stop_event`` is set; ``ready`` is set once it serves frames."""
    daemon = Daemon(settings, notifier=notifier)
    daemon.start()
    if ready is not None:
        ready.set()
    try:
        # Waited in short steps: Python runs a signal handler only in the main thread, and a
        # signal the kernel delivered to another thread does not interrupt a wait without
        # a timeout, so SIGTERM would set nothing until some other event woke this thread.
        # Each step also checks that the database file is still the one opened.
        while not stop_event.wait(STOP_POLL_S) and daemon.fatal is None:
            daemon.check_database()
    finally:
        stats = daemon.stop()
    if daemon.fatal is not None:
        raise DatabaseGone(daemon.fatal)
    return stats


def serve(settings: Settings, *, notifier: Notifier | None = None) -> DaemonStats:
    """Run in the foreground until SIGTERM or SIGINT (main thread only), then stop cleanly.

    The caller exits non-zero when ``stats.abandoned`` frames were left unrecorded.
    """
    stop_event = threading.Event()
    restore = install_stop_signals(stop_event)
    try:
        return run_daemon(settings, stop_event=stop_event, notifier=notifier)
    finally:
        restore()
