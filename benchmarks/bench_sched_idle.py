"""What SCHED_IDLE costs the daemon's host threads beside other busy programs.

Starts ``--busy`` busy-loop processes (normal priority, default: one per core), then

1. runs a thread that computes without pause for ``--seconds`` in a fresh process, at
   normal priority and under SCHED_IDLE, and prints the share of a core it got;
2. runs an in-process daemon (engine on the CPU, one thread) with ``host_priority``
   "normal" and "idle", alternating ``--repeats`` times, and prints how long a burst of
   ``--frames`` frames of ``--size`` pixels took from the first write to the last row.

The busy loops are always killed at the end. Linux only::

    python benchmarks/bench_sched_idle.py --frames 80 --size 256 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import tifffile

from temseg.config import Settings
from temseg.daemon import Daemon

SPIN = """
import os, sys, time
if sys.argv[1] == "idle":
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
seconds = float(sys.argv[2])
cpu, wall = time.process_time(), time.monotonic()
while time.monotonic() - wall < seconds:
    pass
print((time.process_time() - cpu) / seconds)
"""


def core_share(policy: str, seconds: float) -> float:
    """Share of one core a thread computing without pause got under ``policy``."""
    run = subprocess.run(
        [sys.executable, "-c", SPIN, policy, str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(run.stdout)


def rows(db: Path) -> int:
    if not db.exists():
        return 0
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM frames").fetchone()[0])
        except sqlite3.OperationalError:  # schema not created yet
            return 0


def burst_s(priority: str, frames: int, size: int, limit_s: float) -> tuple[float, int]:
    """(seconds from the first write to the last row, rows recorded) for one burst."""
    root = Path(tempfile.mkdtemp(prefix="temseg-idle-"))
    acq, db = root / "acq", root / "temseg.db"
    acq.mkdir()
    settings = Settings(
        watch=acq,
        db=str(db),
        publish="tcp://127.0.0.1:0",
        stable_s=0.3,
        threads=1,
        device="cpu",
        host_priority=priority,  # type: ignore[arg-type]
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 4000, (size, size), dtype=np.uint16) for _ in range(frames)]
    daemon = Daemon(settings)
    daemon.start()
    try:
        start = time.monotonic()
        for i, image in enumerate(images):
            part = acq / f"frame_{i:04d}.tif.part"
            tifffile.imwrite(part, image)
            part.rename(acq / f"frame_{i:04d}.tif")
        while rows(db) < frames and time.monotonic() - start < limit_s:
            time.sleep(0.05)
        return time.monotonic() - start, rows(db)
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit-s", type=float, default=120.0)
    args = parser.parse_args()
    busy = []
    try:
        for _ in range(args.busy):
            busy.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(0.5)
        print(f"busy loops: {args.busy}, cores: {os.cpu_count()}")
        for policy in ("normal", "idle"):
            share = core_share(policy, args.seconds)
            load = os.getloadavg()[0]
            print(
                f"thread computing {args.seconds:g} s, {policy}: {share:.4f} of a core "
                f"(load {load:.1f})"
            )
        for _ in range(args.repeats):
            for priority in ("normal", "idle"):
                seconds, done = burst_s(priority, args.frames, args.size, args.limit_s)
                print(
                    f"burst of {args.frames} x {args.size} px, host_priority={priority}: "
                    f"{done} recorded in {seconds:.1f} s (load {os.getloadavg()[0]:.1f})"
                )
    finally:
        for process in busy:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
