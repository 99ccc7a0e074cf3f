"""The segmentation service: watch a folder, segment each new frame, publish and record it.

Programmatic use (tests, demo, benchmarks)::

    daemon = Daemon(settings)          # validates settings (ConfigError)
    daemon.start()                     # model loaded and warmed, socket bound, watching
    daemon.bound_url                   # e.g. "tcp://127.0.0.1:40123" for publish=...:0
    daemon.wait_idle(timeout_s)        # no accepted frame pending
    stats = daemon.stop()              # finishes frames in flight -> DaemonStats

    run_daemon(settings, stop_event=event, ready=None) -> DaemonStats  # blocking
    serve(settings) -> DaemonStats     # foreground, SIGTERM/SIGINT stop it

The names below are imported on first use, so that a segmentation worker
process (:mod:`temseg.daemon.segment_pool`) imports this package without
PyTorch, SQLAlchemy or ZeroMQ.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from temseg.daemon.lifecycle import Notifier, configure_logging, install_stop_signals
    from temseg.daemon.pipeline import Daemon, DaemonStats, run_daemon, serve
    from temseg.daemon.watcher import FrameWatcher, scan_backlog

_HOME = {
    "Daemon": "pipeline",
    "DaemonStats": "pipeline",
    "run_daemon": "pipeline",
    "serve": "pipeline",
    "FrameWatcher": "watcher",
    "scan_backlog": "watcher",
    "Notifier": "lifecycle",
    "configure_logging": "lifecycle",
    "install_stop_signals": "lifecycle",
}

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


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
