"""Prometheus metrics of one daemon, fed by its event stream.

:class:`MetricsObserver` is an ``inline`` observer (:mod:`temseg.daemon.events`):
per event it increments a counter or observes a histogram, nothing else.
What is a state rather than an event (queue depth, how far behind, the model,
the thresholds) is read when Prometheus scrapes, by :class:`StateCollector`.
Each daemon has a registry of its own, so daemons in one process do not mix.
The metrics are listed in ``docs/daemon.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from temseg.daemon.events import TERMINAL, EventKind, FrameEvent
from temseg.daemon.progress import Progress

if TYPE_CHECKING:
    from temseg.daemon.models import ServedModel
    from temseg.stream.outlet import Outlet

#: Histogram buckets, seconds: one stage of one frame, and detection to outcome.
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

#: The stage a frame was in when it failed, from the last stage event it reached.
_FAILED_IN: dict[EventKind, str] = {
    "received": "read",
    "read": "infer",
    "inferred": "segment",
    "segmented": "record",
    "recorded": "publish",
}
_STAGE_OF: dict[EventKind, str] = {"read": "read", "inferred": "infer", "segmented": "segment"}


class MetricsObserver:
    """Counts frame events into ``registry``'s counters and histograms."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.frames = Counter(
            "temseg_frames",
            "Frames finished, by outcome (published, failed, skipped, abandoned) and material.",
            ["status", "material"],
            registry=registry,
        )
        self.published = Counter(
            "temseg_published", "Mask messages handed to the ZeroMQ stream.", registry=registry
        )
        self.errors = Counter(
            "temseg_errors",
            "Frames failed or abandoned, by the stage they failed in (or 'abandoned').",
            ["reason"],
            registry=registry,
        )
        self.stage_s = Histogram(
            "temseg_stage_seconds",
            "Seconds one frame spent in a stage (read, infer, segment).",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=registry,
        )
        self.latency_s = Histogram(
            "temseg_frame_latency_seconds",
            "Seconds from a frame's detection to its outcome being published.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._stage_s = {kind: self.stage_s.labels(stage) for kind, stage in _STAGE_OF.items()}
        self._lock = threading.Lock()
        self._last: dict[int, EventKind] = {}  # ticket -> last event, until its terminal one
        self.thresholds: dict[str, float] = {}  # material -> the last threshold applied

    def __call__(self, event: FrameEvent) -> None:
        kind = event.kind
        if kind in TERMINAL:
            with self._lock:
                last = self._last.pop(event.ticket, "received")
            self.frames.labels(kind, event.material).inc()
            if kind == "published":
                self.published.inc()
            elif kind == "failed":
                self.errors.labels(_FAILED_IN.get(last, "record")).inc()
            elif kind == "abandoned":
                self.errors.labels("abandoned").inc()
            if kind in ("published", "failed"):
                self.latency_s.observe(event.latency_s)
            return
        with self._lock:
            # A failed frame is recorded too: "recorded" says where it failed only after
            # "segmented" (its publication failed).
            if kind != "recorded" or self._last.get(event.ticket) == "segmented":
                self._last[event.ticket] = kind
        stage = self._stage_s.get(kind)
        if stage is not None and event.stage_s is not None:
            stage.observe(event.stage_s)
        if kind == "segmented" and event.threshold is not None:
            self.thresholds[event.material] = event.threshold


class StateCollector(Collector):
    """What is read at scrape time: queue, frames in flight, seconds behind, model, stream."""

    def __init__(
        self,
        progress: Progress,
        observer: MetricsObserver,
        queue_depth: Callable[[], int],
        model: Callable[[], ServedModel | None],
        stream: Callable[[], Outlet | None],
    ) -> None:
        self._progress = progress
        self._observer = observer
        self._queue_depth = queue_depth
        self._model = model
        self._stream = stream

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "temseg_queue_depth", "Frames read and waiting for inference.", self._queue_depth()
        )
        yield GaugeMetricFamily(
            "temseg_frames_in_flight",
            "Frames accepted and not yet finished.",
            self._progress.in_flight,
        )
        yield GaugeMetricFamily(
            "temseg_seconds_behind",
            "Age (s since detection) of the oldest complete frame not yet recorded; 0 if none.",
            self._progress.seconds_behind(),
        )
        yield GaugeMetricFamily(
            "temseg_stalled_seconds",
            "Seconds the least recently moved frame in flight has not reached a stage; 0 if idle.",
            self._progress.stalled_s(),
        )
        threshold = GaugeMetricFamily(
            "temseg_threshold",
            "Probability threshold last applied, by material.",
            labels=["material"],
        )
        for material, value in sorted(self._observer.thresholds.items()):
            threshold.add_metric([material], value)
        yield threshold
        outlet = self._stream()
        if outlet is not None:
            yield GaugeMetricFamily(
                "temseg_stream_subscribers", "Connections to the stream now.", outlet.peers
            )
            yield GaugeMetricFamily(
                "temseg_stream_prefixes",
                "Distinct subscription prefixes held by the stream's subscribers.",
                outlet.topics,
            )
            yield CounterMetricFamily(
                "temseg_stream_refused",
                "Stream connections shut down for going past max_subscribers or the prefix cap.",
                outlet.refused,
            )
        model = self._model()
        info = InfoMetricFamily("temseg_model", "The model serving now.")
        if model is not None:
            info.add_metric(
                [],
                {
                    "model_id": model.model_id,
                    "backend": model.engine.name,
                    "device": str(model.engine.device),
                    "source": model.source,
                },
            )
        yield info


def daemon_registry(
    progress: Progress,
    queue_depth: Callable[[], int],
    model: Callable[[], ServedModel | None],
    stream: Callable[[], Outlet | None],
) -> tuple[CollectorRegistry, MetricsObserver]:
    """A registry with the daemon's metrics and the observer that feeds it."""
    registry = CollectorRegistry()
    observer = MetricsObserver(registry)
    registry.register(StateCollector(progress, observer, queue_depth, model, stream))
    return registry, observer
