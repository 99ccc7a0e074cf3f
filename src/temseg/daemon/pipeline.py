"""The daemon's pipeline: watcher -> readers -> queue -> inference -> segmenters -> recorder.

Stages and threads:

1. **Intake** (watcher threads and a backlog thread): each complete frame
   file is handed to :meth:`Daemon.submit`, which waits while every reader is
   busy (back-pressure: nothing is ever dropped, the watcher's events buffer).
2. **Readers** (a thread pool, :func:`host_workers`): read the bytes once
   (read-only) for the SHA-256 identity, skip (path, SHA-256) pairs already
   handled or recorded, decode the TIFF, decide the material, prepare the
   model input (normalise, resample to the model's pixel size, pad) and put
   the job on the bounded :class:`FrameQueue` (waiting while it is full).
3. **Inference** (one thread, nothing but the engine's work): follow the
   database's active model and calibrations (checked when frames arrive
   after an idle spell and every ``MODEL_CHECK_S`` under load; thresholds
   are cached in between); take the frames that arrived together (same
   shape and pixel size; up to ``batch_size`` on a GPU, one at a time on
   CPU, see :func:`frames_per_call`) and run them through the engine in one
   call. The probability map goes on with its material's threshold.
4. **Segmenters** (a thread pool, :func:`host_workers`): bring the
   probability back onto the frame's grid, threshold it and measure the
   particles (off the inference thread, so the engine starts the next frame
   at once; several frames at a time, since the labelling releases the GIL),
   write the mask TIFF if asked.
5. **Recorder** (one thread, the only user of the ZeroMQ socket): takes the
   segmented frames in arrival order, records each in the database first
   (its id goes into the message), then publishes the mask, or the error
   on ``temseg.error``.

A database that stays locked (``OperationalError``) is retried with back-off.
Stopping closes the intake, finishes every frame already accepted (at most
``queue_size`` plus the readers' frames), closes the socket and database.
Frames not accepted yet are found by the next start's backlog scan.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.exc import OperationalError

from temseg.config import Settings
from temseg.daemon.faults import FaultPoints
from temseg.daemon.frame_queue import FrameQueue, SeenCache, Stopped
from temseg.daemon.lifecycle import Notifier, WatchdogPinger, install_stop_signals
from temseg.daemon.models import EngineOptions, ModelServer, ServedModel, frames_per_call
from temseg.daemon.rules import (
    MATERIAL_RULE,
    check_daemon_settings,
    is_loopback_endpoint,
    mask_path,
    parse_shape,
    relative_posix,
    resolve_material,
    valid_material,
)
from temseg.daemon.segment_pool import SegmentPool, run_when_cores_are_idle
from temseg.daemon.watcher import FrameWatcher, scan_backlog
from temseg.engine import input_allocator
from temseg.engine.base import resolve_device
from temseg.frames import Frame, FrameError, read_frame
from temseg.inference import (
    ModelInput,
    default_tile,
    input_key,
    prepare_input,
    run_inputs,
    to_float16,
    to_frame_grid,
)
from temseg.segment import Measure, Segmentation, measure_particles, segment_probability
from temseg.store import connect, is_recorded, record_frame
from temseg.stream.protocol import EncodedMask, encode_mask

logger = logging.getLogger("temseg.daemon")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. systemd ``CPUAffinity=``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def host_workers(cores: int) -> tuple[int, int]:
    """(reader threads, segmenter threads) for a machine with ``cores`` cores.

    Readers hash, decode and normalise; segmenters threshold, measure
    particles and write mask files. A 4096 x 4096 px frame costs each about
    as much on one core (reading 55-75 ms, segmenting 60-65 ms,
    ``benchmarks/bench_host.py``), so both get 3 of every 8 cores, from 2
    readers and 1 segmenter up to 8 each; the rest is left to the inference
    thread, the recorder and the watcher. A GPU serving tens of such frames
    per second needs these stages spread over many cores; on a small
    CPU-only machine the engine's threads need the cores instead.
    """
    cores = max(1, cores)
    share = 3 * cores // 8
    return max(2, min(8, share)), max(1, min(8, share))


MODEL_CHECK_S = 2.0  # seconds between checks of the active model and calibrations under load
#: The GIL switch interval while a daemon runs (Python's default is 5 ms). The inference
#: thread gives the GIL back on every engine call and device sync and must take it again;
#: beside a thread running Python, each re-take can wait up to the whole interval. A loop of
#: 20 such releases per 6 ms call ran at 67 calls/s beside a thread running Python 60 % of
#: the time with 5 ms, 85 with 1 ms, 97 with 0.5 ms (157 alone; ``benchmarks/RESULTS.md``).
GIL_SWITCH_INTERVAL_S = 0.001
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_T = TypeVar("_T")


@dataclass
class DaemonStats:
    """Counters of one daemon run. Latencies in ms, from detection to record."""

    done: int = 0
    failed: int = 0
    skipped: int = 0  # already recorded or already handled: same path and bytes
    published: int = 0
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


@dataclass
class _Job:
    path: Path
    relative: str
    received_at: datetime
    detected: float  # time.monotonic() at detection
    ticket: int = 0  # acceptance order: frames enter the queue in this order
    sha256: str = _EMPTY_SHA256
    size_bytes: int = 0
    mtime: float | None = None  # POSIX seconds, when the file was last written
    frame: Frame | None = None
    model_input: ModelInput | None = None  # prepared by the reader for the model serving then
    material: str = ""
    error: str | None = None

    def batch_key(self) -> tuple[Any, ...]:
        if self.frame is None:
            return ("failed",)
        return ("frame", self.frame.image.shape, self.frame.pixel_nm)


@dataclass
class _Outcome:
    job: _Job
    model: ServedModel | None = None
    segmentation: Segmentation | None = None  # made by a segmenter thread
    # Model grid after inference; once segmented, the float16 map to publish (send_probability)
    # or None.
    probability: np.ndarray | None = None
    frame_shape: tuple[int, int] = (0, 0)
    threshold: float | None = None
    threshold_source: str = ""
    pixel_nm: float | None = None  # nm per pixel, for the particles' sizes
    infer_ms: float = 0.0  # per frame: the batch's engine time divided among its frames
    segment_ms: float = 0.0  # thresholding and particle measurement
    mask_path: Path | None = None  # the mask TIFF written, when ``masks`` is set
    encoded_mask: EncodedMask | None = None  # PackBits, made by the segmenter (mask_encoding)


def _read_bytes(path: Path) -> tuple[bytes, float]:
    """A file's content and modification time (POSIX s), from one open (read-only)."""
    with path.open("rb") as fh:
        mtime = os.fstat(fh.fileno()).st_mtime
        return fh.read(), mtime


def _model_input_for(frame: Frame, model: ServedModel) -> ModelInput:
    """``frame`` normalised, resampled and padded for ``model``, in memory its engine reads
    directly (page-locked for a GPU engine)."""
    return prepare_input(
        frame.image, model.bundle, frame.pixel_nm, allocate=input_allocator(model.engine)
    )


def host_threads_idle(host_priority: str, device: str) -> bool:
    """Whether the readers, segmenters and recorder should run under SCHED_IDLE.

    ``host_priority`` is one of :data:`~temseg.daemon.rules.HOST_PRIORITIES`; ``device`` the
    resolved inference device ("cpu", "cuda:0"). With the engine on the CPU
    its threads are the bottleneck: each of its parallel sections waits for
    its slowest thread, so a host thread that takes a core from it for 1 ms
    delays the whole call by about 1 ms, while idle cores (between sections,
    between frames) would have done. On a GPU the host threads are the
    pipeline's bottleneck and keep their priority.
    """
    return host_priority == "idle" or (host_priority == "auto" and not device.startswith("cuda"))


def _iso_utc(posix_s: float) -> str:
    return datetime.fromtimestamp(posix_s, UTC).isoformat()


def _retry_locked(
    fn: Callable[[], _T], what: str, give_up: Callable[[], bool], max_delay_s: float = 2.0
) -> _T:
    """Call ``fn`` until it does not raise ``OperationalError`` (a locked database).

    Waits with exponential back-off, logging each failure; re-raises once
    ``give_up()`` is true.
    """
    delay = 0.05
    while True:
        try:
            return fn()
        except OperationalError as exc:
            if give_up():
                raise
            logger.warning("database busy during %s, retrying in %.2f s: %s", what, delay, exc.orig)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


class Daemon:
    """The segmentation service, runnable in-process: ``start()``, ``stop()``, ``wait_idle()``.

    ``notifier`` sends sd_notify messages (a default :class:`Notifier` reads
    ``NOTIFY_SOCKET``). After :meth:`start` returns the model is loaded and
    warmed, the socket is bound (:attr:`bound_url`), the watcher runs and the
    backlog is being processed.
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
        self.bound_url: str | None = None
        self._closing = threading.Event()  # intake closed
        self._abort = threading.Event()  # give up draining
        self._queue: FrameQueue[_Job] = FrameQueue(settings.queue_size, self._abort)
        auto_readers, auto_segmenters = host_workers(usable_cores())
        self.readers = settings.readers or auto_readers
        self.segmenters = settings.segmenters or auto_segmenters
        self.tile = settings.tile  # pixels; resolved for the device in start()
        self.host_threads_idle = False  # readers, segmenters, recorder under SCHED_IDLE; start()
        self._results: queue.Queue[tuple[_Outcome, Future[None]]] = queue.Queue(
            maxsize=max(1, settings.queue_size)
        )
        self._seen = SeenCache()
        self._slots = threading.Semaphore(self.readers)
        self._lock = threading.Lock()
        self._outstanding = 0  # accepted and not yet recorded or skipped
        self._reading = 0  # accepted and not yet queued
        self._idle = threading.Condition(self._lock)
        self._next_ticket = 0  # acceptance order of frames
        self._queued_ticket = 0  # the ticket whose turn it is to enter the queue
        self._turn = threading.Condition()
        self._inference_done = threading.Event()
        self._check_due = True  # inference thread only: check the database before the next batch
        self._last_check = 0.0  # time.monotonic() of the last check
        self._backlog_submitted = threading.Event()
        self._publisher_ready = threading.Event()
        self._publisher_error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._readers: ThreadPoolExecutor | None = None
        self._segmenters: ThreadPoolExecutor | None = None
        self._segment_pool: SegmentPool | None = None  # with segmenter_processes
        self._measure: Measure = measure_particles  # in the segmenter threads, or the pool's
        self._watcher: FrameWatcher | None = None
        self._pinger: WatchdogPinger | None = None
        self._models: ModelServer | None = None
        self._db: Any = None
        self._stopped = False
        self._shut = False
        self._switch_interval: float | None = None  # the process's, while this daemon runs
        self._gc_frozen = False

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect, load and warm the model, bind the socket, start watching; then READY=1."""
        s = self.settings
        self.notifier.status("loading model")
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # restored in _shutdown
        self._db = connect(s.db, busy_timeout_ms=self._busy_timeout_ms)
        try:
            device = resolve_device(s.device)
            self.tile = s.tile or default_tile(device)
            self.host_threads_idle = host_threads_idle(s.host_priority, device)
            host_start = run_when_cores_are_idle if self.host_threads_idle else None
            options = EngineOptions(
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
            self._models = ModelServer(self._db, pinned=s.model, options=options)
            model = self._models.current
            logger.info(
                "model loaded model_id=%s source=%s backend=%s",
                model.model_id,
                model.source,
                model.engine.name,
            )
            recorder = threading.Thread(target=self._record_loop, name="temseg-recorder")
            recorder.start()
            self._threads.append(recorder)
            self._publisher_ready.wait()
            if self._publisher_error is not None:
                raise self._publisher_error
            self._readers = ThreadPoolExecutor(
                self.readers, thread_name_prefix="temseg-reader", initializer=host_start
            )
            self._segmenters = ThreadPoolExecutor(
                self.segmenters, thread_name_prefix="temseg-segmenter", initializer=host_start
            )
            if s.segmenter_processes:
                self._segment_pool = SegmentPool(self.segmenters, idle=self.host_threads_idle)
                self._segment_pool.start()
                self._measure = self._segment_pool.measure
            inference = threading.Thread(target=self._inference_loop, name="temseg-inference")
            inference.start()
            self._threads.append(inference)
            self._watcher = FrameWatcher(
                self.root,
                self.submit,
                patterns=s.patterns,
                recursive=s.recursive,
                polling=s.polling,
                poll_interval_s=s.poll_interval_s,
                stable_s=s.stable_s,
                follow_symlinks=s.follow_symlinks,
            )
            self._watcher.start()
            backlog = threading.Thread(target=self._backlog, name="temseg-backlog", daemon=True)
            backlog.start()
        except BaseException:
            self._shutdown()
            raise
        self._freeze_gc()
        self.notifier.ready(f"watching {self.root}, publishing on {self.bound_url}")
        self._pinger = WatchdogPinger(self.notifier, self.healthy)
        self._pinger.start()
        logger.info(
            "ready watch=%s publish=%s db=%s model_id=%s host_threads=%s readers=%d "
            "segmenters=%d segment_workers=%d",
            self.root,
            self.bound_url,
            s.db,
            model.model_id,
            "idle" if self.host_threads_idle else "normal",
            self.readers,
            self.segmenters,
            0 if self._segment_pool is None else self._segment_pool.workers,
        )

    def stop(self) -> DaemonStats:
        """Close the intake, finish accepted frames, close socket and database. Idempotent."""
        if self._stopped:
            return self.stats
        self._stopped = True
        self.notifier.stopping("finishing frames in flight")
        logger.info("stopping: finishing %d accepted frame(s)", self.pending)
        self._shutdown()
        self.stats.max_queued = self._queue.high_water
        logger.info(
            "stopped done=%d failed=%d skipped=%d published=%d",
            self.stats.done,
            self.stats.failed,
            self.stats.skipped,
            self.stats.published,
        )
        return self.stats

    def _shutdown(self) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
            self._closing.set()
        if self._watcher is not None:
            self._watcher.stop()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        else:  # start failed before the pipeline ran: nothing will be drained
            self._inference_done.set()
        for thread in self._threads:
            thread.join()
        if self._segmenters is not None:  # idle: the recorder waited for every frame
            self._segmenters.shutdown(wait=True)
        if self._segment_pool is not None:
            self._segment_pool.close()
        if self._pinger is not None:
            self._pinger.stop()
        if self._models is not None:
            self._models.close()
        if self._db is not None:
            self._db.dispose()
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
        if self._gc_frozen:
            gc.unfreeze()

    def _freeze_gc(self) -> None:
        """Collect once, then keep what exists now out of Python's cyclic garbage collections.

        With PyTorch, SQLAlchemy and the model loaded, a full collection walks
        over 200,000 objects and holds the GIL for 100-180 ms, stalling every
        thread of the pipeline; frames allocate enough to trigger one every 100
        to 200 frames of 4096 px (``benchmarks/RESULTS.md``). Frozen, the
        collections walk only what frames allocated since. Undone in
        :meth:`_shutdown`; redone after a model swap, so that the new model's
        objects are left out too and the old one's can be collected even if
        they form reference cycles.
        """
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._gc_frozen = True

    def segment_worker_pids(self) -> list[int]:
        """Process ids of the segmentation workers (``segmenter_processes``), else empty."""
        return [] if self._segment_pool is None else self._segment_pool.pids()

    def healthy(self) -> bool:
        """True while the pipeline threads and the watcher run (gates the systemd watchdog ping)."""
        threads_alive = all(t.is_alive() for t in self._threads)
        watching = self._watcher is not None and self._watcher.is_alive()
        return threads_alive and watching and not self._closing.is_set()

    @property
    def pending(self) -> int:
        """Frames accepted and not yet recorded (or skipped)."""
        with self._lock:
            return self._outstanding

    @property
    def model(self) -> ServedModel | None:
        """The model serving now."""
        return None if self._models is None else self._models.current

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until the backlog is submitted and no accepted frame is pending (False: timeout)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self._backlog_submitted.wait(timeout_s):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, remaining)

    # ----------------------------------------------------------------- intake

    def submit(self, path: Path) -> bool:
        """Accept a complete frame file; waits while all readers are busy. False once stopping."""
        path = Path(path)
        job = _Job(
            path=path,
            relative=relative_posix(path, self.root),
            received_at=datetime.now(UTC),
            detected=time.monotonic(),
        )
        while not self._slots.acquire(timeout=0.1):
            if self._closing.is_set():
                return False
        with self._lock:  # _shutdown() closes the intake under this lock
            if self._closing.is_set() or self._readers is None:
                self._slots.release()
                return False
            self._outstanding += 1
            self.stats.max_pending = max(self.stats.max_pending, self._outstanding)
            self._reading += 1
            job.ticket = self._next_ticket
            self._next_ticket += 1
            self._readers.submit(self._read, job)
        logger.debug("accepted path=%s", path)
        return True

    def _backlog(self) -> None:
        try:
            self._submit_backlog()
        finally:
            self._backlog_submitted.set()

    def _submit_backlog(self) -> None:
        try:
            paths = scan_backlog(
                self.root,
                self.settings.patterns,
                self.settings.recursive,
                self.settings.follow_symlinks,
            )
        except OSError as exc:
            logger.error("backlog scan of %s failed: %s", self.root, exc)
            return
        self.stats.backlog = len(paths)
        if paths:
            logger.info("backlog frames=%d (oldest first)", len(paths))
        for path in paths:
            if self._closing.is_set() or not self.submit(path):
                return

    def _finish_one(self) -> None:
        with self._idle:
            self._outstanding -= 1
            self._idle.notify_all()

    # ----------------------------------------------------------------- readers

    def _read(self, job: _Job) -> None:
        """Prepare ``job`` in parallel with the other readers, queue it in acceptance order."""
        queued = False
        try:
            ready = self._prepare(job)
            if ready:
                self._faults.reached("read")
        except Exception:
            logger.exception("reader failed path=%s", job.path)
            ready = False
        with self._turn:
            self._turn.wait_for(lambda: self._queued_ticket == job.ticket)
        try:
            if ready:
                self._queue.put(job)
                queued = True
        except Stopped:
            logger.warning("frame not processed (aborted) path=%s", job.path)
        finally:
            with self._turn:
                self._queued_ticket += 1
                self._turn.notify_all()
            with self._lock:
                self._reading -= 1
            self._slots.release()
            if not queued:
                self._finish_one()

    def _prepare(self, job: _Job) -> bool:
        """Hash, deduplicate and decode; False when the frame was already handled."""
        data = b""
        started = time.perf_counter()
        try:
            data, job.mtime = _read_bytes(job.path)
            job.sha256, job.size_bytes = hashlib.sha256(data).hexdigest(), len(data)
        except OSError as exc:
            job.error = f"{job.path}: cannot read ({exc.strerror or exc})"
        identity = (str(job.path), job.sha256)
        if not self._seen.add(identity) or _retry_locked(
            lambda: is_recorded(self._db, *identity), "duplicate check", self._abort.is_set
        ):
            with self._lock:
                self.stats.skipped += 1
            logger.debug("skipped (already recorded) path=%s sha256=%s", job.path, job.sha256)
            return False
        frame_material: str | None = None
        if job.error is None:
            try:
                job.frame = read_frame(job.path, data=data)  # the bytes that were hashed
                frame_material = job.frame.material
            except FrameError as exc:
                job.error = str(exc)
            except (OSError, MemoryError) as exc:
                job.error = f"{job.path}: cannot read ({exc})"
        if frame_material and not valid_material(frame_material):
            job.error = (
                f"{job.path}: material {frame_material[:80]!r} in the frame's metadata "
                f"is not a valid name ({MATERIAL_RULE})"
            )
            job.frame, frame_material = None, None
        if job.frame is not None and self._models is not None:
            try:  # off the inference thread
                job.model_input = _model_input_for(job.frame, self._models.current)
                job.frame.read_ms = (time.perf_counter() - started) * 1e3  # read to model input
            except Exception as exc:
                job.error = f"{job.path}: cannot prepare the frame for the model ({exc})"
                job.frame = None
        job.material, _ = resolve_material(
            frame_material, job.relative, self.settings.folder_rules, self.settings.material
        )
        return True

    # ----------------------------------------------------------------- inference

    def _inference_loop(self) -> None:
        models = self._models
        assert models is not None
        try:
            while True:
                if len(self._queue) == 0:  # idle: the next frame sees the database as it is then
                    self._check_due = True
                limit = frames_per_call(models.current.engine, self.settings.batch_size)
                batch = self._queue.take_batch(limit, _Job.batch_key, timeout_s=0.1)
                if not batch:
                    if self._closing.is_set() and self._drained():
                        return
                    continue
                outcomes = self._infer(batch)
                self._faults.reached("infer")
                assert self._segmenters is not None
                for outcome in outcomes:  # segmented in parallel, recorded in this order
                    self._results.put((outcome, self._segmenters.submit(self._segment, outcome)))
        finally:
            self._inference_done.set()

    def _drained(self) -> bool:
        with self._lock:
            reading = self._reading
        return reading == 0 and len(self._queue) == 0

    def _infer(self, batch: list[_Job]) -> list[_Outcome]:
        if batch[0].frame is None:
            return [_Outcome(job) for job in batch]
        models = self._models
        assert models is not None
        now = time.monotonic()
        if self._check_due or now - self._last_check >= MODEL_CHECK_S:
            self._check_due = False
            self._last_check = now
            self._check_models(models)
        model = models.current
        outcomes = [_Outcome(job, model=model) for job in batch]
        try:
            for outcome in outcomes:
                outcome.threshold, outcome.threshold_source = _retry_locked(
                    partial(models.threshold, outcome.job.material),
                    "threshold lookup",
                    self._abort.is_set,
                )
            start = time.perf_counter()
            inputs = [self._model_input(job, model) for job in batch]
            probabilities = run_inputs(
                inputs, model.engine, tile=self.tile, overlap=self.settings.tile_overlap
            )
            infer_ms = (time.perf_counter() - start) * 1e3 / len(batch)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for outcome, probability, x in zip(outcomes, probabilities, inputs, strict=True):
                assert outcome.job.frame is not None
                outcome.probability = probability
                outcome.frame_shape = x.frame_shape
                outcome.pixel_nm = outcome.job.frame.pixel_nm
                outcome.infer_ms = infer_ms
                outcome.job.model_input = None  # its memory goes now
        except Exception as exc:  # an engine failure fails these frames, not the daemon
            logger.exception("inference failed for %d frame(s)", len(batch))
            for outcome in outcomes:
                outcome.job.error = f"{outcome.job.path}: inference failed ({exc})"
                outcome.probability = None
        return outcomes

    def _model_input(self, job: _Job, model: ServedModel) -> ModelInput:
        """The reader's input, or a new one when the model changed in between."""
        assert job.frame is not None
        x = job.model_input
        if x is None or x.made_for != input_key(model.bundle):
            x = _model_input_for(job.frame, model)
        return x

    def _check_models(self, models: ModelServer) -> None:
        """Follow the database's active model; forget cached thresholds (new calibrations)."""
        try:
            if models.refresh():
                self.stats.model_swaps += 1
                self._freeze_gc()  # the new model's objects frozen too; the old one's freed
        except OperationalError as exc:
            logger.warning("active model check skipped: database busy (%s)", exc.orig)
            self._check_due = True
        except Exception:  # the serving model stays; the next batch checks again
            logger.exception("active model check failed")
            self._check_due = True
        self.stats.model_rejects = models.rejects

    # ----------------------------------------------------------------- segmenters

    def _segment(self, outcome: _Outcome) -> None:
        """Threshold, measure particles, make the float16 map if it is sent and the
        PackBits mask if that is the encoding, write the mask file if asked; a failure
        fails the frame.

        Runs on the segmenter pool, frames in parallel; the recorder takes
        the results in arrival order.
        """
        job = outcome.job
        if outcome.probability is None or outcome.threshold is None or job.error is not None:
            return
        start = time.perf_counter()
        segmented: float | None = None  # the timing covers thresholding and particles only
        try:
            outcome.probability = to_frame_grid(outcome.probability, outcome.frame_shape)
            outcome.segmentation = segment_probability(
                outcome.probability, outcome.threshold, outcome.pixel_nm, measure=self._measure
            )
            segmented = time.perf_counter()
            # What the recorder publishes besides the mask: the map as the wire's float16,
            # converted here, frames in parallel (on the recorder, one thread, a 4096 px
            # map took 45-90 ms), or nothing, and its memory goes now.
            send = self.settings.send_probability
            outcome.probability = to_float16(outcome.probability) if send else None
            if self.settings.mask_encoding == "packbits":  # here too, not on the recorder
                outcome.encoded_mask = encode_mask(outcome.segmentation.mask, "packbits")
        except Exception as exc:
            logger.exception("segmentation failed path=%s", job.path)
            job.error = f"{job.path}: segmentation failed ({exc})"
            outcome.probability = None
            return
        finally:
            outcome.segment_ms = ((segmented or time.perf_counter()) - start) * 1e3
        if self.settings.masks is not None:
            outcome.mask_path = self._write_mask(job, outcome.segmentation.mask)

    # ----------------------------------------------------------------- recorder

    def _record_loop(self) -> None:
        from temseg.stream import Publisher

        s = self.settings
        try:
            publisher = Publisher(
                s.publish,
                send_hwm=s.send_hwm,
                encoding=s.mask_encoding,
                send_probability=s.send_probability,
                curve_keys=s.curve_keys,
            )
        except BaseException as exc:
            self._publisher_error = exc
            self._publisher_ready.set()
            return
        self.bound_url = publisher.bound_url
        self._publisher_ready.set()
        # Only now: ZeroMQ's I/O and CURVE threads and pyzmq's collector, started with the
        # publisher, inherit this thread's policy and must keep normal priority to serve
        # every subscriber.
        if self.host_threads_idle:
            run_when_cores_are_idle()
        try:
            while True:
                try:
                    outcome, segmented = self._results.get(timeout=0.1)
                except queue.Empty:
                    if self._inference_done.is_set() and self._results.empty():
                        return
                    continue
                try:
                    segmented.result()
                    self._complete(outcome, publisher)
                    self._faults.reached("publish")
                except Exception:
                    logger.exception("recording failed path=%s", outcome.job.path)
                finally:
                    self._finish_one()
        finally:
            publisher.close()

    def _complete(self, outcome: _Outcome, publisher: Any) -> None:
        job, seg = outcome.job, outcome.segmentation
        failed = seg is None or job.error is not None
        written_mask = outcome.mask_path
        latency_ms = (time.monotonic() - job.detected) * 1e3
        seq = publisher.seq + 1  # the number the next message gets
        common: dict[str, Any] = {
            "source_path": str(job.path),
            "sha256": job.sha256,
            "size_bytes": job.size_bytes,
            "material": job.material,
            "received_at": job.received_at,
            "latency_ms": latency_ms,
            "seq": seq,
        }
        if failed:
            error = job.error or "unknown error"
            frame_id = self._record(common, status="failed", error=error)
            publisher.publish_error(str(job.path), error)
            self.stats.failed += 1
            logger.warning(
                "frame failed path=%s material=%s frame_id=%d error=%s",
                job.path,
                job.material,
                frame_id,
                error,
            )
        else:
            assert seg is not None and outcome.model is not None and job.frame is not None
            model = outcome.model
            height, width = seg.mask.shape
            frame_id = self._record(
                common,
                status="done",
                model_id=model.model_id,
                threshold=seg.threshold,
                n_particles=seg.n_particles,
                area_fraction=seg.area_fraction,
                mask_path=None if written_mask is None else str(written_mask),
                height=height,
                width=width,
                pixel_nm=outcome.pixel_nm,
                backend=model.engine.backend,
                particles=seg.particles,
            )
            read_ms = job.frame.read_ms
            header = {
                "frame_id": frame_id,
                "source": str(job.path),
                "relative_path": job.relative,
                "sha256": job.sha256,
                "material": job.material,
                "model_id": model.model_id,
                "model_source": model.source,
                "backend": model.engine.name,
                "threshold": seg.threshold,
                "threshold_source": outcome.threshold_source,
                "n_particles": seg.n_particles,
                "area_fraction": seg.area_fraction,
                "pixel_nm": outcome.pixel_nm,
                "particles": [p.to_dict() for p in seg.particles],
                "timing_ms": {
                    "read": round(read_ms, 3),
                    "infer": round(outcome.infer_ms, 3),
                    "segment": round(outcome.segment_ms, 3),
                    "total": round(read_ms + outcome.infer_ms + outcome.segment_ms, 3),
                },
                "latency_ms": round(latency_ms, 3),
                "acquired_at": None if job.mtime is None else _iso_utc(job.mtime),
                "received_at": job.received_at.isoformat(),
            }
            # 0/1 by construction: as booleans the encoder needs no range check of its values.
            mask = outcome.encoded_mask or seg.mask.view(bool)
            publisher.publish_mask(header, mask, outcome.probability)
            self.stats.done += 1
            self.stats.particles += seg.n_particles
            logger.info(
                "frame path=%s material=%s particles=%d ms=%.1f infer_ms=%.1f threshold=%.3f "
                "model_id=%s frame_id=%d seq=%d",
                job.path,
                job.material,
                seg.n_particles,
                latency_ms,
                outcome.infer_ms,
                seg.threshold,
                model.model_id,
                frame_id,
                seq,
            )
        self.stats.published += 1
        self.stats.latency_ms_total += latency_ms
        self.notifier.status(
            f"{self.stats.done} frames done, {self.stats.failed} failed; last {job.relative}"
        )

    def _record(self, common: dict[str, Any], **fields: Any) -> int:
        frame_id = _retry_locked(
            lambda: record_frame(self._db, **common, **fields), "record", self._abort.is_set
        )
        self._faults.reached("record")
        return frame_id

    def _write_mask(self, job: _Job, mask: np.ndarray) -> Path | None:
        from temseg.frames.write import write_mask_tiff

        assert self.settings.masks is not None
        target = mask_path(Path(self.settings.masks), job.relative)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_mask_tiff(target, mask, compress=True)
        except OSError as exc:
            logger.error("mask not written path=%s error=%s", target, exc)
            return None
        return target


def run_daemon(
    settings: Settings,
    *,
    stop_event: threading.Event,
    ready: threading.Event | None = None,
    notifier: Notifier | None = None,
) -> DaemonStats:
    """Run the daemon until ``stop_event`` is set; ``ready`` is set once it serves frames."""
    daemon = Daemon(settings, notifier=notifier)
    daemon.start()
    if ready is not None:
        ready.set()
    try:
        stop_event.wait()
    finally:
        stats = daemon.stop()
    return stats


def serve(settings: Settings, *, notifier: Notifier | None = None) -> DaemonStats:
    """Run in the foreground until SIGTERM or SIGINT (main thread only), then stop cleanly."""
    stop_event = threading.Event()
    restore = install_stop_signals(stop_event)
    try:
        return run_daemon(settings, stop_event=stop_event, notifier=notifier)
    finally:
        restore()
