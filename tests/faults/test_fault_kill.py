"""SIGKILL of ``temseg daemon`` at random points while frames keep arriving.

Each cycle starts a fresh daemon process and kills it: either the process
kills itself at a crash point (``TEMSEG_FAULT_POINT``: after reading a frame,
after the engine ran, between the database commit and the publish, after the
publish) on a random arrival, or the test sends SIGKILL at a random time.
A writer keeps adding frames throughout, also while no daemon runs. After the
last restart every frame must be recorded exactly once, the database must
pass ``PRAGMA integrity_check``, no frame may have been published twice and
the acquisition folder must be untouched.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from faultkit import (
    DaemonProcess,
    assert_recorded_once,
    count_rows,
    free_port,
    integrity,
    scaled,
    tiff_bytes,
    wait_for,
)
from framekit import fingerprint, frame_rows, write_renamed

from temseg.daemon.faults import ENV_VAR
from temseg.stream import Subscriber

KINDS = ("read", "infer", "record", "publish", "external")
SEED = 20_240_611
WRITE_SPAN_S = 3.0  # each cycle's frames are spread over this long
BATCH = 4


class Writer(threading.Thread):
    """Writes frames one by one, as many as it has been allowed so far."""

    def __init__(self, folder: Path, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.interval_s = interval_s
        self.written: dict[Path, str] = {}  # SHA-256
        self.mtimes: dict[Path, int] = {}  # ns
        self._allowed = 0
        self._cond = threading.Condition()
        self._closed = False

    def allow(self, n: int) -> None:
        with self._cond:
            self._allowed += n
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or len(self.written) < self._allowed)
                if len(self.written) >= self._allowed:
                    return
            index = len(self.written)
            data = tiff_bytes(index)
            path = self.folder / f"kill_{index:05d}.tif"
            write_renamed(path, data)
            self.mtimes[path] = path.stat().st_mtime_ns
            self.written[path] = hashlib.sha256(data).hexdigest()
            time.sleep(self.interval_s)


class Collector(threading.Thread):
    """A subscriber that outlives the daemons (ZeroMQ reconnects) and counts each frame's masks."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.masks: Counter[tuple[str, str]] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        with Subscriber(self.url, timeout_ms=100) as sub:
            while not self.stop.is_set():
                message = sub.receive()
                if message is not None and not message.is_error:
                    self.masks[(message.header["source"], message.header["sha256"])] += 1


@pytest.mark.slow
def test_sigkill_at_random_points_records_every_frame_once(acq: Path, tmp_path: Path) -> None:
    n_kills = scaled(5, 20)
    n_frames = scaled(240, 2000)
    rng = random.Random(SEED)
    plan = [KINDS[i % len(KINDS)] for i in range(n_kills)]
    rng.shuffle(plan)
    per_cycle = n_frames // (n_kills + 1)
    db = tmp_path / "state" / "temseg.db"
    db.parent.mkdir()
    url = f"tcp://127.0.0.1:{free_port()}"
    args = (
        "--watch", str(acq),
        "--db", str(db),
        "--publish", url,
        "--threads", "1",
        "--batch-size", str(BATCH),
        "--queue-size", "8",
        "--stable-s", "0.3",
    )  # fmt: skip
    writer = Writer(acq, interval_s=WRITE_SPAN_S / per_cycle)
    collector = Collector(url)
    collector.start()
    writer.start()
    kills: list[str] = []
    final: DaemonProcess | None = None
    try:
        for kind in plan:
            writer.allow(per_cycle)
            env = {}
            if kind != "external":
                # Every new frame reaches read, record and publish once, every batch infer once;
                # this cycle brings per_cycle new frames, so the point is certainly reached.
                most = per_cycle // BATCH if kind == "infer" else per_cycle
                env[ENV_VAR] = f"{kind}:{rng.randint(1, most)}"
            daemon = DaemonProcess(*args, env=env)
            try:
                if kind == "external":
                    daemon.wait_line(" ready ")
                    time.sleep(rng.uniform(0.0, WRITE_SPAN_S))
                    daemon.kill()
                assert daemon.wait(timeout_s=120) == -9, "".join(daemon.lines[-20:])
            finally:
                daemon.close()
            if kind != "external":
                assert daemon.logged(f"fault point {env[ENV_VAR]} reached")
            kills.append(env.get(ENV_VAR, "external"))

        writer.allow(n_frames - per_cycle * n_kills)
        final = DaemonProcess(*args)
        writer.close()
        writer.join(timeout=300)
        assert not writer.is_alive()
        assert len(writer.written) == n_frames
        assert wait_for(lambda: count_rows(db) >= n_frames, timeout_s=scaled(120, 600)), (
            f"{count_rows(db)} of {n_frames} frames recorded after {len(kills)} kills {kills}"
        )
        assert final.terminate() == 0, "".join(final.lines[-20:])
    finally:
        writer.close()
        collector.stop.set()
        collector.join(timeout=10)
        if final is not None:
            final.close()

    rows = frame_rows(db)
    assert_recorded_once(rows, writer.written)
    assert {r["status"] for r in rows} == {"done"}
    assert integrity(db) == "ok"
    twice = {k: v for k, v in collector.masks.items() if v > 1}
    assert not twice, f"published more than once: {list(twice)[:3]}"
    for path, sha256 in writer.written.items():
        assert fingerprint(path) == (sha256, writer.mtimes[path]), path
    print(
        f"\n{len(kills)} kills {kills}; {n_frames} frames recorded once; "
        f"{len(collector.masks)} masks seen by a subscriber spanning the restarts"
    )
