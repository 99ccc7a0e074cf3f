"""Crash points for the fault-injection tests (``tests/faults``); inert unless asked for.

``TEMSEG_FAULT_POINT=POINT:N`` in the daemon's environment makes the process
kill itself with SIGKILL the ``N``-th time (1-based) it reaches ``POINT``:

- ``read``: a frame was hashed and decoded, not yet queued for inference;
- ``infer``: the engine ran a batch, nothing of it recorded yet;
- ``record``: a frame's row was committed, its message not yet published;
- ``publish``: a frame's message was handed to ZeroMQ.

The environment is read when the daemon is created. Without the variable
each point costs one comparison. Never set it in production.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping

ENV_VAR = "TEMSEG_FAULT_POINT"
POINTS = ("read", "infer", "record", "publish")

logger = logging.getLogger("temseg.daemon")


class FaultPoints:
    """Kills the process at the configured point and count; see the module docstring."""

    def __init__(self, spec: str | None = None) -> None:
        self.point: str | None = None
        self.count = 0
        self._reached = 0
        self._lock = threading.Lock()
        if not spec:
            return
        point, _, count = spec.partition(":")
        if point not in POINTS or not count.isdigit() or int(count) < 1:
            raise ValueError(
                f"{ENV_VAR}={spec!r}: expected POINT:N with POINT one of {', '.join(POINTS)} "
                "and N >= 1"
            )
        self.point, self.count = point, int(count)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FaultPoints:
        env = os.environ if environ is None else environ
        return cls(env.get(ENV_VAR))

    def reached(self, point: str) -> None:
        """Count one arrival at ``point``; SIGKILL this process on the configured arrival."""
        if point != self.point:
            return
        with self._lock:
            self._reached += 1
            if self._reached != self.count:
                return
        logger.critical("fault point %s:%d reached: killing the process", point, self.count)
        os.kill(os.getpid(), signal.SIGKILL)
