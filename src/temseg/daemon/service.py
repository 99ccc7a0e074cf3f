"""The daemon as a service: start, health, stop with a deadline.

:class:`Daemon` puts the pieces together: the database, the model server,
the stages (:func:`~temseg.daemon.stages.build_stages`) on their threads
(:class:`~temseg.daemon.pipeline.Pipeline`), the intake, the event stream
and its observers, systemd's notifications.

Stopping closes the intake, finishes every frame already accepted (at most
``queue_size`` plus the readers' frames) and closes the socket and the
database. Frames not accepted yet are found by the next start's backlog
scan. A database that stays locked is retried; once ``stop_timeout_s``
seconds of stopping have passed with it still locked, the daemon gives up:
the frames not recorded by then stay unrecorded (the next start's backlog
finds them), one ERROR line says so, and :func:`~temseg.daemon.run.serve`'s caller exits
non-zero (``stats.abandoned``).
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from pathlib import Path

from temseg.config import Settings
from temseg.daemon.database import Database
from temseg.daemon.db_guard import DatabaseGuard
from temseg.daemon.endpoint import Endpoint
from temseg.daemon.events import EventStream
from temseg.daemon.faults import FaultPoints
from temseg.daemon.host import host_threads_idle, host_workers, usable_cores
from temseg.daemon.intake import Intake
from temseg.daemon.lifecycle import Notifier, WatchdogPinger
from temseg.daemon.metrics import daemon_registry
from temseg.daemon.models import EngineOptions, ModelServer, ServedModel
from temseg.daemon.observers import DaemonStats, LogObserver, StatsObserver, StatusObserver
from temseg.daemon.pipeline import Pipeline
from temseg.daemon.progress import Progress
from temseg.daemon.publish import PublishSink
from temseg.daemon.rules import (
    check_daemon_settings,
    is_loopback_endpoint,
    parse_listen,
    parse_shape,
)
from temseg.daemon.segment_pool import SegmentPool
from temseg.daemon.stages import build_stages
from temseg.engine.base import resolve_device
from temseg.inference import default_tile
from temseg.segment import Measure, measure_particles
from temseg.store import connect
from temseg.stream.outlet import Outlet

logger = logging.getLogger("temseg.daemon")

#: The GIL switch interval while a daemon runs (Python's default is 5 ms). The inference
#: thread gives the GIL back on every engine call and device sync and must take it again;
#: beside a thread running Python, each re-take can wait up to the whole interval, so a
#: shorter interval lets the engine start its next call sooner (``benchmarks/RESULTS.md``).
GIL_SWITCH_INTERVAL_S = 0.001


class _ProcessTuning:
    """The process-wide settings daemons change while they run, shared by every daemon of
    the process: the first to start shortens the GIL switch interval, the last to stop
    restores it and lets Python's collector walk the frozen objects again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._switch_interval_s = sys.getswitchinterval()

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                self._switch_interval_s = sys.getswitchinterval()
                sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                sys.setswitchinterval(self._switch_interval_s)
                gc.unfreeze()


_PROCESS_TUNING = _ProcessTuning()


class DatabaseGone(RuntimeError):
    """The database file was deleted or replaced while the daemon ran."""


class Daemon:
    """The segmentation service, runnable in-process: ``start()``, ``stop()``, ``wait_idle()``.

    ``notifier`` sends sd_notify messages (a default :class:`Notifier` reads
    ``NOTIFY_SOCKET``). After :meth:`start` returns the model is loaded and
    warmed, the socket is bound (:attr:`bound_url`), the watcher runs and the
    backlog is being processed. Every frame's progress is on :attr:`events`;
    metrics, health and readiness are served on :attr:`metrics_url`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        db_busy_timeout_ms: int = 5000,
    ) -> None:
        self.settings = settings
        self._busy_timeout_ms = db_busy_timeout_ms
        self.root = check_daemon_settings(settings)
        self._faults = FaultPoints.from_env()
        if settings.curve_keys is None and not is_loopback_endpoint(settings.publish):
            logger.warning(
                "publishing on %s WITHOUT CURVE: every host that can reach this port receives "
                "the masks; set curve_keys (temseg keys generate) or bind 127.0.0.1",
                settings.publish,
            )
        self.stats = DaemonStats()
        self.notifier = notifier if notifier is not None else Notifier()
        self.events = EventStream()
        self.events.subscribe(StatsObserver(self.stats), inline=True)
        self.events.subscribe(LogObserver(), inline=True)
        self.events.subscribe(StatusObserver(self.notifier, self.stats), inline=True)
        self.progress = Progress()
        self.events.subscribe(self.progress, inline=True)
        self.registry, metrics = daemon_registry(
            self.progress, self._queue_depth, lambda: self.model, self._stream_outlet
        )
        self.events.subscribe(metrics, inline=True)
        self._listen = parse_listen(settings.metrics, "metrics")
        self._endpoint: Endpoint | None = None
        self._ready = False  # model loaded, socket bound, not stopping: /readyz
        auto_readers, auto_segmenters = host_workers(usable_cores())
        self.readers = settings.readers or auto_readers
        self.segmenters = settings.segmenters or auto_segmenters
        self.tile = settings.tile  # pixels; resolved for the device in start()
        self.host_threads_idle = False  # readers, segmenters, recorder under SCHED_IDLE; start()
        self._intake = Intake(
            self.root, settings, slots=self.readers, emit=self.events.emit, stats=self.stats
        )
        self._abort = threading.Event()  # stopping gave up: abandon what is not recorded
        self._deadline: float | None = None  # time.monotonic() when stopping gives up
        self._pipeline: Pipeline | None = None
        self._segment_pool: SegmentPool | None = None  # with segmenter_processes
        self._pinger: WatchdogPinger | None = None
        self._models: ModelServer | None = None
        self._db: Database | None = None
        self._db_guard = DatabaseGuard(settings.db)
        self.fatal: str | None = None  # why the daemon must stop; run_daemon raises it
        self._stopped = False
        self._shut = False
        self._shut_lock = threading.Lock()
        self._tuned = False  # this daemon counts in _PROCESS_TUNING

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect, load and warm the model, bind the socket, start watching; then READY=1."""
        s = self.settings
        if self._listen is not None:  # first: /readyz answers 503 while the model loads
            self._endpoint = Endpoint(*self._listen, self.registry, self.healthy, self.ready)
            self._endpoint.start()
            logger.info("metrics, health and readiness on %s", self._endpoint.url)
        self.notifier.status("loading model")
        _PROCESS_TUNING.enter()  # left in _shutdown, also when starting fails below
        self._tuned = True
        try:
            self._db = connect(s.db, busy_timeout_ms=self._busy_timeout_ms)
            self._db_guard.acquire()  # a second daemon on this database stops here
            self._db_guard.remember()
            device = resolve_device(s.device)
            self.tile = s.tile or default_tile(device)
            self.host_threads_idle = host_threads_idle(s.host_priority)
            self._models = ModelServer(self._db, pinned=s.model, options=self._engine_options())
            model = self._models.current
            logger.info(
                "model loaded model_id=%s source=%s backend=%s",
                model.model_id,
                model.source,
                model.engine.name,
            )
            measure: Measure = measure_particles  # in the segmenter threads
            if s.segmenter_processes:
                self._segment_pool = SegmentPool(self.segmenters, idle=self.host_threads_idle)
                self._segment_pool.start()
                measure = self._segment_pool.measure
            stages = build_stages(
                s,
                db=self._db,
                models=self._models,
                measure=measure,
                tile=self.tile,
                give_up=self._give_up,
                on_model_swap=self._freeze_gc,
                faults=self._faults,
                stats=self.stats,
                read_again=self._intake.submit,
                root=self.root,
                check_db=self._check_db_or_raise,
                read_buffers=self.readers + 2,
            )
            self._pipeline = Pipeline(
                stages,
                self._intake,
                self.events,
                readers=self.readers,
                segmenters=self.segmenters,
                queue_size=s.queue_size,
                host_idle=self.host_threads_idle,
                give_up=self._give_up,
                abort=self._abort,
                faults=self._faults,
            )
            self._pipeline.start()
            self._intake.start(self._pipeline.accept)
        except BaseException:
            self._shutdown()
            raise
        self._freeze_gc()
        self._ready = True
        curve = "on" if s.curve_keys is not None else "off"
        self.notifier.ready(f"watching {self.root}, publishing on {self.bound_url} (CURVE {curve})")
        self._pinger = WatchdogPinger(self.notifier, self.healthy)
        self._pinger.start()
        logger.info(
            "ready watch=%s publish=%s curve=%s db=%s model_id=%s host_threads=%s readers=%d "
            "segmenters=%d segment_workers=%d",
            self.root,
            self.bound_url,
            curve,
            s.db,
            model.model_id,
            "idle" if self.host_threads_idle else "normal",
            self.readers,
            self.segmenters,
            0 if self._segment_pool is None else self._segment_pool.workers,
        )

    def _engine_options(self) -> EngineOptions:
        s = self.settings
        return EngineOptions(
            backend=s.backend,
            device=s.device,
            threads=s.threads,
            cache_dir=s.engine_cache,
            tile=self.tile,
            tile_overlap=s.tile_overlap,
            batch=s.batch_size,
            compile=s.compile,
            warmup_shapes=tuple(parse_shape(shape) for shape in s.warmup_shapes),
        )

    def stop(self) -> DaemonStats:
        """Close the intake, finish accepted frames, close socket and database. Idempotent.

        Gives up on a database still locked ``stop_timeout_s`` seconds after
        the call (see the module docstring); ``stats.abandoned`` counts the
        frames left unrecorded.
        """
        if self._stopped:
            return self.stats
        self._stopped = True
        self._ready = False
        self._deadline = time.monotonic() + self.settings.stop_timeout_s
        self.notifier.stopping("finishing frames in flight")
        logger.info("stopping: finishing %d accepted frame(s)", self.pending)
        self._shutdown()
        if self._pipeline is not None:
            self.stats.max_queued = self._pipeline.queue.high_water
        if self._abort.is_set() and self.fatal is None:
            logger.error(
                "stop gave up: the database was still locked after stop_timeout_s=%g s; "
                "%d accepted frame(s) not recorded, the next start's backlog scan finds them",
                self.settings.stop_timeout_s,
                self.stats.abandoned,
            )
        logger.info(
            "stopped done=%d failed=%d skipped=%d published=%d abandoned=%d",
            self.stats.done,
            self.stats.failed,
            self.stats.skipped,
            self.stats.published,
            self.stats.abandoned,
        )
        return self.stats

    def _give_up(self) -> bool:
        """True once stopping has waited ``stop_timeout_s`` for the database."""
        if self._abort.is_set():
            return True
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _shutdown(self) -> None:
        with self._shut_lock:
            if self._shut:
                return
            self._shut = True
        self._intake.close()
        if self._pipeline is not None:
            self._pipeline.drain()
        self.events.close()
        if self._segment_pool is not None:
            self._segment_pool.close()
        if self._pinger is not None:
            self._pinger.stop()
        if self._models is not None:
            self._models.close()
        if self._db is not None:
            self._db.dispose()
        self._db_guard.release()
        if self._endpoint is not None:
            self._endpoint.close()
        if self._tuned:
            self._tuned = False
            _PROCESS_TUNING.leave()

    def _freeze_gc(self) -> None:
        """Collect once, then keep what exists now out of Python's cyclic garbage collections.

        With PyTorch, SQLAlchemy and the model loaded, a full collection walks
        hundreds of thousands of objects and holds the GIL long enough to
        stall every thread of the pipeline, and frames allocate enough to
        trigger one every few hundred frames (``benchmarks/RESULTS.md``).
        Frozen, the collections walk only what frames allocated since. Undone
        when the process's last daemon stops; redone after a model swap, so that the new
        model's objects are left out too and the old one's can be collected
        even if they form reference cycles.
        """
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    # ----------------------------------------------------------------- state

    @property
    def bound_url(self) -> str | None:
        """The publisher's endpoint once started (the port chosen for ``tcp://...:0``)."""
        if self._pipeline is None:
            return None
        for sink in self._pipeline.stages.sinks:
            url = getattr(sink, "bound_url", None)
            if url is not None:
                return str(url)
        return None

    def _stream_outlet(self) -> Outlet | None:
        if self._pipeline is None:
            return None
        sinks = self._pipeline.stages.sinks
        return next((s.outlet for s in sinks if isinstance(s, PublishSink)), None)

    def submit(self, path: Path) -> bool:
        """Accept a complete frame file; waits while all readers are busy. False once stopping."""
        return self._intake.submit(path)

    def segment_worker_pids(self) -> list[int]:
        """Process ids of the segmentation workers (``segmenter_processes``), else empty."""
        return [] if self._segment_pool is None else self._segment_pool.pids()

    def healthy(self) -> bool:
        """True while the threads run and the frames move: /healthz and the watchdog ping.

        Needs the pipeline threads and the watcher alive, and no frame in flight
        that has not reached its next stage for ``stuck_after_s`` seconds
        (:class:`~temseg.daemon.progress.Progress`); idle with nothing pending is healthy.
        """
        running = self._pipeline is not None and self._pipeline.alive()
        if not (running and self._intake.watching() and not self._intake.closing.is_set()):
            return False
        if self.fatal is not None:
            return False
        return not self.progress.wedged(self.settings.stuck_after_s)

    def ready(self) -> bool:
        """True from READY=1 (model loaded, socket bound) until stopping begins: /readyz."""
        return self._ready

    @property
    def metrics_url(self) -> str | None:
        """The HTTP endpoint's base URL once started (``metrics`` "off": None)."""
        return None if self._endpoint is None else self._endpoint.url

    def _queue_depth(self) -> int:
        return 0 if self._pipeline is None else len(self._pipeline.queue)

    def check_database(self) -> None:
        """Stop for good (:meth:`_fail`) if the database file was deleted or replaced."""
        problem = self._db_guard.problem()
        if problem is not None:
            self._fail(f"{problem}: stopping, nothing more is recorded or published")

    def _check_db_or_raise(self) -> None:
        self.check_database()
        if self.fatal is not None:
            raise DatabaseGone(self.fatal)

    def _fail(self, reason: str) -> None:
        """Give up for good: ``reason`` logged once at CRITICAL; frames not yet recorded
        are abandoned (the next start's backlog finds them); run_daemon raises it."""
        with self._shut_lock:
            if self.fatal is not None:
                return
            self.fatal = reason
        logger.critical("%s", reason)
        self._abort.set()

    @property
    def pending(self) -> int:
        """Frames accepted and not yet recorded (or skipped)."""
        return self._intake.pending

    @property
    def model(self) -> ServedModel | None:
        """The model serving now."""
        return None if self._models is None else self._models.current

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until the backlog is submitted and no accepted frame is pending (False: timeout)."""
        return self._intake.wait_idle(timeout_s)
