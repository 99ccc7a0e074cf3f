"""CPU time the metrics add per frame: the daemon's metrics observer and a scrape.

Feeds the events of one frame that is published (received, read, inferred,
segmented, recorded, published) to :class:`~temseg.daemon.metrics.MetricsObserver`
and :class:`~temseg.daemon.progress.Progress`, as the pipeline's threads do,
and reports microseconds of CPU per frame, the median of ``--repeats`` runs
of ``--frames`` frames each; then the time of one scrape (``generate_latest``)::

    python benchmarks/bench_metrics_observer.py --frames 20000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from prometheus_client import generate_latest

from temseg.daemon.events import FrameEvent
from temseg.daemon.metrics import daemon_registry
from temseg.daemon.progress import Progress

KINDS = ("received", "read", "inferred", "segmented", "recorded", "published")


def frame_events(ticket: int) -> list[FrameEvent]:
    path = Path(f"/acq/frame_{ticket:06d}.tif")
    return [
        FrameEvent(
            kind=kind,  # type: ignore[arg-type]
            path=path,
            relative_path=path.name,
            ticket=ticket,
            latency_s=0.05 * i,
            stage_s=0.01 if kind in ("read", "inferred", "segmented") else None,
            material="Au" if ticket % 2 else "CdSe",
            threshold=0.5 if kind in ("segmented", "recorded", "published") else None,
            n_particles=3,
        )
        for i, kind in enumerate(KINDS)
    ]


def run(frames: int, with_progress: bool) -> float:
    """CPU microseconds per frame of the metrics observer (and Progress if asked)."""
    progress = Progress()
    _registry, observer = daemon_registry(progress, lambda: 0, lambda: None)
    events = [e for ticket in range(frames) for e in frame_events(ticket)]
    observers = [observer, progress] if with_progress else [observer]
    start = time.process_time()
    for event in events:
        for call in observers:
            call(event)
    return (time.process_time() - start) / frames * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    metrics = [run(args.frames, False) for _ in range(args.repeats)]
    both = [run(args.frames, True) for _ in range(args.repeats)]
    progress = Progress()
    registry, observer = daemon_registry(progress, lambda: 0, lambda: None)
    for ticket in range(100):
        for event in frame_events(ticket):
            observer(event)
    start = time.process_time()
    for _ in range(200):
        generate_latest(registry)
    scrape_ms = (time.process_time() - start) / 200 * 1e3
    print(
        f"metrics observer: {statistics.median(metrics):.1f} us CPU per frame "
        f"({min(metrics):.1f}-{max(metrics):.1f}); with progress tracking: "
        f"{statistics.median(both):.1f} us ({min(both):.1f}-{max(both):.1f}); "
        f"one scrape: {scrape_ms:.2f} ms CPU"
    )


if __name__ == "__main__":
    main()
