"""The segmentation service: watch a folder, segment each new frame, publish and record it.

Programmatic use (tests, demo, benchmarks)::

    daemon = Daemon(settings)          # validates settings (ConfigError)
    daemon.start()                     # model loaded and warmed, socket bound, watching
    daemon.bound_url                   # e.g. "tcp://127.0.0.1:40123" for publish=...:0
    daemon.wait_idle(timeout_s)        # no accepted frame pending
    stats = daemon.stop()              # finishes frames in flight -> DaemonStats

    run_daemon(settings, stop_event=event, ready=None) -> DaemonStats  # blocking
    serve(settings) -> DaemonStats     # foreground, SIGTERM/SIGINT stop it
"""

from temseg.daemon.lifecycle import Notifier, configure_logging, install_stop_signals
from temseg.daemon.pipeline import Daemon, DaemonStats, run_daemon, serve
from temseg.daemon.watcher import FrameWatcher, scan_backlog

__all__ = [
    "Daemon",
    "DaemonStats",
    "FrameWatcher",
    "Notifier",
    "configure_logging",
    "install_stop_signals",
    "run_daemon",
    "scan_backlog",
    "serve",
]
