"""Particle measurement in worker processes, so that it holds no lock the daemon needs.

Part of measuring a mask's particles holds Python's GIL (the per-particle
Python and numpy calls; the share per frame is in ``benchmarks/RESULTS.md``);
in threads, that share of every frame waits for and blocks the daemon's
other threads. A :class:`SegmentPool` runs
:func:`temseg.segment.measure_packed` in worker processes instead: the
segmenter thread thresholds the map (numpy, GIL released), packs the mask
8 pixels per byte, waits for a worker and gets the particles back. The
workers import numpy and SciPy only.

Workers are started fresh (``spawn``), never by forking the daemon, whose
CUDA context and threads must not be copied, and not from a fork server
either: systemd's SIGTERM reaches every process of the service, and a
pool whose fork server died takes its workers for dead. As always with
spawned processes, a script that starts a daemon with worker processes
itself must do so under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from temseg.segment import Particle, measure_packed

logger = logging.getLogger("temseg.daemon")

#: Seconds to wait for the workers to start and import their modules.
START_TIMEOUT_S = 120.0


class SegmentWorkerError(RuntimeError):
    """A segmentation worker process died while measuring a frame's particles."""


def _start_worker(idle: bool) -> None:
    """A worker ignores SIGTERM and SIGINT: systemd's stop and a terminal's Ctrl-C reach
    every process of the service, and the daemon, which drains its frames first, stops
    its workers itself (:meth:`SegmentPool.close`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if idle:
        run_when_cores_are_idle()


def run_when_cores_are_idle() -> None:
    """Put the calling thread under Linux's SCHED_IDLE, if allowed (a daemon host thread,
    or a worker process's only thread)."""
    if not hasattr(os, "SCHED_IDLE"):
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:
        logger.warning("host thread keeps its priority: SCHED_IDLE refused (%s)", exc)


class SegmentPool:
    """``workers`` processes that measure particles; :meth:`measure` is a ``Measure``.

    ``idle`` runs the workers under SCHED_IDLE (as the daemon's host threads
    beside a CPU engine). Workers ignore SIGTERM and SIGINT and stop when
    :meth:`close` is called. A worker that dies fails the frame it was
    measuring (:class:`SegmentWorkerError`); the pool is replaced and the
    next frames go to new workers.
    """

    def __init__(self, workers: int, *, idle: bool = False) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._idle = idle
        self._lock = threading.Lock()
        self._executor = self._new_executor()
        self.replaced = 0  # pools replaced after a worker died

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self._idle,),
        )

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start every worker and let it import its modules, before the first frame."""
        empty = np.packbits(np.zeros((8, 8), dtype=bool))
        futures = [
            self._executor.submit(measure_packed, empty, (8, 8), None, 1)
            for _ in range(self.workers)
        ]
        for future in futures:
            future.result(timeout=timeout_s)

    def measure(
        self, binary: np.ndarray, pixel_nm: float | None, min_area_px: int
    ) -> tuple[list[Particle], int]:
        """:func:`temseg.segment.measure_particles` of ``binary``, run by a worker process."""
        bits = np.packbits(binary)
        executor = self._executor
        try:
            return executor.submit(
                measure_packed, bits, binary.shape, pixel_nm, min_area_px
            ).result()
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise SegmentWorkerError(
                f"a segmentation worker process died ({exc}); new workers were started"
            ) from exc

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is not broken:  # another thread replaced it already
                return
            logger.error("a segmentation worker process died; starting new workers")
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
            self.replaced += 1

    def pids(self) -> list[int]:
        """Process ids of the workers running now (for CPU accounting)."""
        processes = self._executor._processes.values()  # the executor's own record of them
        return [process.pid for process in processes if process.pid is not None]

    def close(self) -> None:
        """Stop the workers once they finish what they were given."""
        self._executor.shutdown(wait=True)
