"""Thread priorities: the inference thread gets the CPU first.

On a machine with few cores, the engine's threads and the daemon's other
threads (readers: hash and decode; recorder: threshold, particles, database,
publish) compete for the same cores. When the others preempt an engine
thread, the engine's parallel sections wait for it, and throughput drops
more than the others' CPU time accounts for. Running the reader and
recorder threads at a higher nice value lets them fill the cycles the
engine leaves idle instead (`benchmarks/RESULTS.md`).

Linux only: there, nice values are per thread (``setpriority`` with a
thread id). Elsewhere this does nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

MAX_NICE = 19


def lower_thread_priority(increment: int) -> bool:
    """Raise the calling thread's nice value by ``increment`` (0-19, capped at 19).

    Returns True when the thread now runs at the lower priority; False on
    platforms without per-thread nice values, for ``increment`` 0, or when
    the system refuses (logged at WARNING; the thread goes on unchanged).
    """
    if increment < 0 or increment > MAX_NICE:
        raise ValueError(f"nice increment must be in 0..{MAX_NICE}, got {increment}")
    if increment == 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, current + increment))
    except OSError as exc:
        logger.warning(
            "cannot lower the priority of thread %s: %s", threading.current_thread().name, exc
        )
        return False
    return True
