"""Particle measurement in real worker processes, as the daemon runs it."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest
from scipy import ndimage

from temseg.daemon.segment_pool import SegmentPool, SegmentWorkerError
from temseg.segment import measure_particles


def blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A boolean mask of about a hundred blobs, some cut by the borders."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, bool)
    seeds[rng.integers(0, shape[0], 100), rng.integers(0, shape[1], 100)] = True
    return ndimage.binary_dilation(seeds, iterations=4)


def heavy_modules_loaded() -> list[str]:
    """Which of the daemon's large dependencies this process has imported."""
    return [name for name in ("torch", "sqlalchemy", "zmq", "watchdog") if name in sys.modules]


@pytest.fixture
def pool():
    pool = SegmentPool(2)
    pool.start()
    yield pool
    pool.close()


@pytest.mark.parametrize("shape", [(300, 517), (1100, 1050)])
def test_workers_measure_what_the_daemon_would(pool: SegmentPool, shape: tuple[int, int]) -> None:
    mask = blobs(shape, 1)
    got = pool.measure(mask, 0.05, 3)
    assert got == measure_particles(mask, 0.05, 3)
    assert len(got[0]) > 50


def test_workers_import_neither_torch_nor_the_daemons_io(pool: SegmentPool) -> None:
    import temseg.daemon.service  # noqa: F401  (the parent has everything)

    assert "torch" in sys.modules
    assert pool._executor.submit(heavy_modules_loaded).result() == []


def test_a_dead_worker_fails_its_frame_and_new_workers_take_the_next() -> None:
    pool = SegmentPool(1)
    pool.start()
    try:
        pid = pool._executor.submit(os.getpid).result()
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        mask = blobs((200, 200), 2)
        with pytest.raises(SegmentWorkerError, match="worker process died"):
            pool.measure(mask, None, 1)
        assert pool.replaced == 1
        assert pool.measure(mask, None, 1) == measure_particles(mask, None, 1)
        assert pool._executor.submit(os.getpid).result() != pid
    finally:
        pool.close()


def test_workers_outlive_a_stop_signal_until_the_pool_closes(pool: SegmentPool) -> None:
    pids = {pool._executor.submit(os.getpid).result() for _ in range(4)}
    for pid in pids:  # what systemd's stop and Ctrl-C send to every process of the service
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
    mask = blobs((300, 300), 3)
    assert pool.measure(mask, None, 1) == measure_particles(mask, None, 1)
    assert pool.replaced == 0 and set(pool.pids()) >= pids
    processes = list(pool._executor._processes.values())
    pool.close()
    assert not any(p.is_alive() for p in processes)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
@pytest.mark.parametrize("idle", [True, False])
def test_workers_yield_the_cores_when_asked(idle: bool) -> None:
    pool = SegmentPool(1, idle=idle)
    try:
        policy = pool._executor.submit(os.sched_getscheduler, 0).result()
    finally:
        pool.close()
    assert policy == (os.SCHED_IDLE if idle else os.SCHED_OTHER)


def test_no_workers_refused() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        SegmentPool(0)
