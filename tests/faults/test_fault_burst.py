"""A burst of small frames written as fast as the disk takes them.

Every frame must be recorded exactly once, and the daemon's memory must stay
bounded: the frame queue never holds more than ``queue_size`` frames and the
frames accepted but unfinished never exceed what the stages can hold.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from faultkit import assert_recorded_once, count_rows, rss_bytes, scaled, tiff_bytes
from faultkit import wait_for as poll_until
from framekit import frame_rows

QUEUE, BATCH = 4, 2
RSS_GROWTH_LIMIT = 256 * 2**20  # bytes


class PeakRss:
    """Samples this process's resident size every 20 ms until stopped."""

    def __init__(self) -> None:
        self.baseline = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.baseline


@pytest.mark.slow
def test_burst_recorded_exactly_once_with_bounded_queues(
    make_daemon, acq: Path, db_path: Path
) -> None:
    n = scaled(300, 2000)
    daemon = make_daemon(queue_size=QUEUE, batch_size=BATCH)
    payloads = [tiff_bytes(i) for i in range(n)]  # made beforehand: the burst is only writes
    memory = PeakRss()
    start = time.monotonic()
    expected = {}
    for i, data in enumerate(payloads):
        path = acq / f"burst_{i:05d}.tif"
        path.write_bytes(data)  # open, write, close: reported on close
        expected[path] = hashlib.sha256(data).hexdigest()

    assert poll_until(lambda: count_rows(db_path) >= n, timeout_s=scaled(120, 600)), (
        f"only {count_rows(db_path)} of {n} frames recorded"
    )
    assert daemon.wait_idle(60)
    elapsed_s = time.monotonic() - start
    stats = daemon.stop()
    growth = memory.stop()

    rows = frame_rows(db_path)
    assert_recorded_once(rows, expected)
    assert {r["status"] for r in rows} == {"done"}
    assert (stats.done, stats.failed) == (n, 0)
    # The burst outran inference, so the queue filled up, and never beyond its size.
    assert stats.max_queued == QUEUE
    # Readers + frame queue + the batch in the engine + result queue + the frame being recorded.
    assert stats.max_pending <= daemon.readers + QUEUE + BATCH + QUEUE + 1
    assert growth < RSS_GROWTH_LIMIT, f"resident memory grew by {growth / 2**20:.0f} MiB"
    print(
        f"\n{n} frames in {elapsed_s:.1f} s, each recorded once; frame queue at most "
        f"{stats.max_queued}, pending at most {stats.max_pending}, "
        f"resident memory +{growth / 2**20:.0f} MiB"
    )
