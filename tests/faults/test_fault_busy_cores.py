"""Other programs keeping every core busy must not stall a daemon whose engine runs on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from faultkit import count_rows, tiff_bytes, wait_for
from framekit import write_renamed

FRAMES = 5


def idle_threads() -> list[int]:
    """Native ids of this process's threads under SCHED_IDLE."""
    tids = [int(task.name) for task in Path("/proc/self/task").iterdir()]
    policies = {}
    for tid in tids:
        try:
            policies[tid] = os.sched_getscheduler(tid)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    return [tid for tid, policy in policies.items() if policy == os.SCHED_IDLE]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="needs Linux's SCHED_IDLE")
@pytest.mark.parametrize("segmenter_processes", [False, True])
def test_busy_loops_on_every_core_do_not_stall_a_cpu_engine_daemon(
    make_daemon, acq: Path, db_path: Path, segmenter_processes: bool
) -> None:
    # Under SCHED_IDLE a thread gets a fraction of a percent of a core beside any
    # normal-priority process on it, and an unprivileged process cannot take a thread out
    # of SCHED_IDLE again: by default (host_priority "auto") no thread or worker process
    # of the daemon may be under it, whatever the device.
    busy: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(os.cpu_count() or 1):
            busy.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        daemon = make_daemon(device="cpu", segmenter_processes=segmenter_processes)
        for i in range(FRAMES):
            write_renamed(acq / f"frame_{i}.tif", tiff_bytes(i, 256))
        recorded = wait_for(lambda: count_rows(db_path) == FRAMES, timeout_s=60)
        assert recorded, f"{count_rows(db_path)} of {FRAMES} frames recorded in 60 s"
        assert idle_threads() == []
        workers = daemon.segment_worker_pids()
        assert len(workers) == (daemon.segmenters if segmenter_processes else 0)
        assert all(os.sched_getscheduler(pid) == os.SCHED_OTHER for pid in workers)
    finally:
        for process in busy:
            process.kill()
            process.wait()
