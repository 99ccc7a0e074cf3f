"""The segmentation service: watch a folder, segment each new frame, publish and record it.

How it is built (the stages, the event stream, the threads) and how to run
and observe it: ``docs/daemon.md``. The names in ``__all__`` are imported on
first use, so that a segmentation worker process
(:mod:`temseg.daemon.segment_pool`) imports this package without PyTorch,
SQLAlchemy or ZeroMQ.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from temseg.daemon.events import EventStream, FrameEvent
    from temseg.daemon.lifecycle import Notifier, configure_logging, install_stop_signals
    from temseg.daemon.observers import DaemonStats
    from temseg.daemon.run import run_daemon, serve
    from temseg.daemon.service import Daemon
    from temseg.daemon.watcher import FrameWatcher, scan_backlog

_HOME = {
    "Daemon": "service",
    "run_daemon": "run",
    "serve": "run",
    "DaemonStats": "observers",
    "EventStream": "events",
    "FrameEvent": "events",
    "FrameWatcher": "watcher",
    "scan_backlog": "watcher",
    "Notifier": "lifecycle",
    "configure_logging": "lifecycle",
    "install_stop_signals": "lifecycle",
}

__all__ = [
    "Daemon",
    "DaemonStats",
    "EventStream",
    "FrameEvent",
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
