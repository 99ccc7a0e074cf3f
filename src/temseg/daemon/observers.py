"""The daemon's own observers of the frame events: statistics, log lines, systemd status.

Each is subscribed ``inline`` (:mod:`temseg.daemon.events`): it only counts
or writes a line, so the frame may wait for it, and the counters are up to
date when :meth:`~temseg.daemon.service.Daemon.wait_idle` returns.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from temseg.daemon.events import FrameEvent
from temseg.daemon.lifecycle import Notifier
from temseg.daemon.rules import shown_path

logger = logging.getLogger("temseg.daemon")


@dataclass
class DaemonStats:
    """Counters of one daemon run. Latencies in ms, from detection to publication.

    The per-frame counters come from the event stream (:class:`StatsObserver`);
    ``batches``, ``largest_batch``, ``model_swaps`` and ``model_rejects`` from
    the inference stage; ``backlog`` and ``max_pending`` from the intake;
    ``max_queued`` from the frame queue, at stop.
    """

    done: int = 0
    failed: int = 0
    skipped: int = 0  # already recorded or already handled: same path and bytes
    deferred: int = 0  # reads of files still being written, read again later
    published: int = 0
    abandoned: int = 0  # accepted and never recorded: the next start's backlog finds them
    particles: int = 0
    model_swaps: int = 0
    model_rejects: int = 0
    latency_ms_total: float = 0.0
    backlog: int = 0  # frames found in the folder at start
    batches: int = 0  # engine calls
    largest_batch: int = 0
    max_pending: int = 0  # most frames accepted and not yet finished at one time
    max_queued: int = 0  # most frames waiting in the frame queue at one time

    @property
    def mean_latency_ms(self) -> float | None:
        n = self.done + self.failed
        return self.latency_ms_total / n if n else None


class StatsObserver:
    """Counts the terminal events into ``stats``."""

    def __init__(self, stats: DaemonStats) -> None:
        self.stats = stats
        self._lock = threading.Lock()  # readers (skipped) and the recorder count at once

    def __call__(self, event: FrameEvent) -> None:
        stats, kind = self.stats, event.kind
        with self._lock:
            if kind == "skipped":
                stats.skipped += 1
            elif kind == "deferred":
                stats.deferred += 1
            elif kind == "abandoned":
                stats.abandoned += 1
            elif kind in ("published", "failed"):
                stats.published += 1
                stats.latency_ms_total += event.latency_s * 1e3
                if kind == "failed":
                    stats.failed += 1
                else:
                    stats.done += 1
                    stats.particles += event.n_particles or 0


class LogObserver:
    """One log line per frame outcome (INFO; WARNING for a failed frame), DEBUG for the others."""

    def __init__(self) -> None:
        self._infer_s: dict[tuple[int, int], float] = {}  # by frame, inferred to outcome

    def __call__(self, event: FrameEvent) -> None:
        kind = event.kind
        if kind == "received":
            logger.debug("accepted path=%s", shown_path(event.path))
        elif kind == "inferred":
            self._infer_s[event.ticket, event.frame_index] = event.stage_s or 0.0
        elif kind == "skipped":
            logger.debug(
                "skipped (already recorded) path=%s sha256=%s", shown_path(event.path), event.sha256
            )
        elif kind == "deferred":
            logger.info(
                "incomplete, read again later path=%s: %s", shown_path(event.path), event.error
            )
        elif kind == "published":
            logger.info(
                "frame path=%s material=%s particles=%d ms=%.1f infer_ms=%.1f threshold=%.3f "
                "model_id=%s frame_id=%d seq=%d",
                shown_path(event.path),
                event.material,
                event.n_particles or 0,
                event.latency_s * 1e3,
                self._infer_s.pop((event.ticket, event.frame_index), 0.0) * 1e3,
                event.threshold or 0.0,
                event.model_id,
                event.frame_id or 0,
                event.seq or 0,
            )
        elif kind == "failed":
            self._infer_s.pop((event.ticket, event.frame_index), None)
            logger.warning(
                "frame failed path=%s material=%s frame_id=%d error=%s",
                shown_path(event.path),
                event.material,
                event.frame_id or 0,
                event.error,
            )
        elif kind == "abandoned":  # the daemon's stop says so once, at ERROR
            self._infer_s.pop((event.ticket, event.frame_index), None)
            logger.info(
                "frame not recorded path=%s error=%s; the next start's backlog finds it",
                shown_path(event.path),
                event.error,
            )


class StatusObserver:
    """systemd's STATUS= line after each frame outcome: frames done and failed, the last one."""

    def __init__(self, notifier: Notifier, stats: DaemonStats) -> None:
        self._notifier = notifier
        self._stats = stats

    def __call__(self, event: FrameEvent) -> None:
        if event.kind in ("published", "failed") and self._notifier.enabled:
            self._notifier.status(
                f"{self._stats.done} frames done, {self._stats.failed} failed; "
                f"last {shown_path(event.relative_path)}"
            )
