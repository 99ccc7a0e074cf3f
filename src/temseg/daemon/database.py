"""Waiting out a locked database, up to the stop deadline.

SQLite lets one writer in at a time; another process holding the lock (a
backup, a long query in a notebook) makes every write wait ``busy_timeout``
and then fail with ``OperationalError``. The stages that touch the database
retry through :func:`retry_locked` until it answers, or until ``give_up()``
says stopping has waited long enough (``stop_timeout_s``, see
:class:`temseg.daemon.service.Daemon`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine as Database
from sqlalchemy.exc import OperationalError

logger = logging.getLogger("temseg.daemon")

_T = TypeVar("_T")

__all__ = ["Database", "retry_locked"]


def retry_locked(
    fn: Callable[[], _T], what: str, give_up: Callable[[], bool], max_delay_s: float = 2.0
) -> _T:
    """Call ``fn`` until it does not raise ``OperationalError`` (a locked database).

    Waits with exponential back-off from 50 ms up to ``max_delay_s`` seconds,
    logging each failure ("database busy during WHAT"); re-raises once
    ``give_up()`` is true.
    """
    delay = 0.05
    while True:
        try:
            return fn()
        except OperationalError as exc:
            if give_up():
                raise
            logger.warning("database busy during %s, retrying in %.2f s: %s", what, delay, exc.orig)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
