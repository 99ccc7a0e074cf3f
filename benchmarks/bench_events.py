"""What the per-frame event stream costs: one frame's events through the daemon's observers.

Emits the events of a frame that goes through every stage (received, read,
inferred, segmented, recorded, published) to the daemon's own inline
observers (statistics, log lines with the per-frame INFO line filtered out,
systemd status without a socket), and optionally to queued observers as well::

    python benchmarks/bench_events.py --frames 20000 --queued 1

Prints the microseconds per frame spent in ``emit`` by the pipeline threads.
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from temseg.daemon.events import EventKind, EventStream, FrameEvent
from temseg.daemon.lifecycle import Notifier
from temseg.daemon.observers import DaemonStats, LogObserver, StatsObserver, StatusObserver
from temseg.daemon.work import FrameWork

KINDS: tuple[EventKind, ...] = (
    "received",
    "read",
    "inferred",
    "segmented",
    "recorded",
    "published",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--queued", type=int, default=0, help="queued observers (no-op)")
    args = parser.parse_args()
    logging.getLogger("temseg.daemon").setLevel(logging.WARNING)  # no per-frame INFO line
    stats = DaemonStats()
    stream = EventStream()
    stream.subscribe(StatsObserver(stats), inline=True)
    stream.subscribe(LogObserver(), inline=True)
    stream.subscribe(StatusObserver(Notifier({}), stats), inline=True)

    def nothing(_event: FrameEvent) -> None:
        pass

    for _ in range(args.queued):
        stream.subscribe(nothing, max_pending=len(KINDS) * args.frames)
    work = FrameWork(
        path=Path("/acquisition/frame.tif"),
        relative="frame.tif",
        received_at=datetime.now(UTC),
        detected=time.monotonic(),
    )
    start = time.perf_counter()
    for _ in range(args.frames):
        for kind in KINDS:
            stream.emit(work.event(kind, 0.001))
    per_frame_us = (time.perf_counter() - start) / args.frames * 1e6
    stream.close()
    print(
        f"{len(KINDS)} events per frame, 3 inline observers, {args.queued} queued: "
        f"{per_frame_us:.1f} us per frame in emit ({stats.done} frames counted)"
    )


if __name__ == "__main__":
    main()
