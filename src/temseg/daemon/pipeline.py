"""The stage list, and the threads that run it.

Stages, in the order a frame meets them (each module's docstring lists what
it reads and what it fills in):

=============  ===========================  =====================================
stage          module                       runs on
=============  ===========================  =====================================
intake         :mod:`~.intake`              watcher threads, backlog thread
read           :mod:`~.read`                readers: a thread pool, in parallel
prepare        :mod:`~.prepare`             readers
infer          :mod:`~.infer`               the inference thread, frames batched
segment        :mod:`~.segment`             segmenters: a thread pool, in parallel
masks (sink)   :mod:`~.masks`               segmenters
record (sink)  :mod:`~.record`              the recorder thread, in arrival order
publish (sink) :mod:`~.publish`             the recorder thread
=============  ===========================  =====================================

:func:`~temseg.daemon.stages.build_stages` is the one place they are listed: a
new per-frame stage is a module with a callable taking a
:class:`~temseg.daemon.work.FrameWork`, and one line there. After the reader
stages a frame is queued in acceptance order on the bounded
:class:`~temseg.daemon.frame_queue.FrameQueue` (its ``put`` waits while it is
full); the inference thread takes the frames that arrived together; the
segmenters work on several frames at once and the recorder takes them back in
arrival order. Every step is reported on the event stream
(:mod:`temseg.daemon.events`).

Why these threads: the inference thread does nothing but the engine's work,
so a GPU is never kept waiting by the host; reading and segmenting release
the GIL for most of their time and run on as many cores as
:func:`~temseg.daemon.host.host_workers` gives them; one recorder keeps the database writes and
the ZeroMQ socket (not thread-safe) on one thread, in order. The measured
costs behind this layout are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from temseg.daemon.events import EventKind, EventStream
from temseg.daemon.faults import FaultPoints
from temseg.daemon.frame_queue import FrameQueue, Stopped
from temseg.daemon.intake import Intake
from temseg.daemon.segment_pool import run_when_cores_are_idle
from temseg.daemon.stages import Stages
from temseg.daemon.work import FrameWork, Stage

logger = logging.getLogger("temseg.daemon")


class Pipeline:
    """Runs ``stages`` on the threads described in the module docstring.

    ``host_idle`` runs the readers, segmenters and recorder under SCHED_IDLE
    (:func:`~temseg.daemon.host.host_threads_idle`). ``abort`` is set once stopping gives up: the
    frames still in the pipeline are then abandoned instead of recorded.
    """

    def __init__(
        self,
        stages: Stages,
        intake: Intake,
        events: EventStream,
        *,
        readers: int,
        segmenters: int,
        queue_size: int,
        host_idle: bool,
        give_up: Callable[[], bool],
        abort: threading.Event,
        faults: FaultPoints,
    ) -> None:
        self.stages = stages
        self._intake = intake
        self._emit = events.emit
        self._readers_n, self._segmenters_n = readers, segmenters
        self._host_idle = host_idle
        self._give_up = give_up
        self._abort = abort
        self._faults = faults
        self.queue: FrameQueue[FrameWork] = FrameQueue(queue_size, abort)
        self._results: queue.Queue[tuple[FrameWork, Future[None]]] = queue.Queue(
            maxsize=max(1, queue_size)
        )
        self._lock = threading.Lock()
        self._reading = 0  # accepted and not yet queued
        self._queued_ticket = 0  # the ticket whose turn it is to enter the queue
        self._turn = threading.Condition()
        self._inference_done = threading.Event()
        self._sinks_open = threading.Event()
        self._sinks_error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._readers: ThreadPoolExecutor | None = None
        self._segmenters: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Open the sinks on the recorder thread, start the pools and the inference thread."""
        recorder = threading.Thread(target=self._record_loop, name="temseg-recorder")
        recorder.start()
        self._threads.append(recorder)
        self._sinks_open.wait()
        if self._sinks_error is not None:
            raise self._sinks_error
        host_start = run_when_cores_are_idle if self._host_idle else None
        self._readers = ThreadPoolExecutor(
            self._readers_n, thread_name_prefix="temseg-reader", initializer=host_start
        )
        self._segmenters = ThreadPoolExecutor(
            self._segmenters_n, thread_name_prefix="temseg-segmenter", initializer=host_start
        )
        inference = threading.Thread(target=self._inference_loop, name="temseg-inference")
        inference.start()
        self._threads.append(inference)

    def accept(self, work: FrameWork) -> None:
        """Give an accepted frame to the readers (the intake's hand-off)."""
        assert self._readers is not None
        with self._lock:
            self._reading += 1
        self._readers.submit(self._read, work)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def drain(self) -> None:
        """Finish every accepted frame (the intake is closed), then stop the threads."""
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        else:  # start failed before the pipeline ran: nothing will be drained
            self._inference_done.set()
        for thread in self._threads:
            thread.join()
        if self._segmenters is not None:  # idle: the recorder waited for every frame
            self._segmenters.shutdown(wait=True)

    # ----------------------------------------------------------------- readers

    def _read(self, work: FrameWork) -> None:
        """Run the reader stages, then queue the file's frames in acceptance order.

        A stack's later frames each become a work of their own; they go
        through the reader stages after the first (model input) one at a time
        as they enter the queue, so a long stack never holds all its inputs.
        """
        self._run_readers(work, self.stages.read)
        todo = [] if work.skipped else [work, *self._more_frames(work)]
        with self._turn:
            self._turn.wait_for(lambda: self._queued_ticket == work.ticket)
        queued = 0
        try:
            for one in todo:
                if one is not work:
                    self._run_readers(one, self.stages.read[1:])
                self.queue.put(one)
                queued += 1
        except Stopped:
            for one in todo[queued:]:
                one.error = "stopping gave up before it was inferred"
                self._emit(one.event("abandoned"))
        finally:
            with self._turn:
                self._queued_ticket += 1
                self._turn.notify_all()
            with self._lock:
                self._reading -= 1
            self._intake.slot_free()
            for _ in range(max(1, len(todo)) - queued):
                self._intake.finished()

    def _run_readers(self, work: FrameWork, stages: list[Stage]) -> None:
        start = time.perf_counter()
        try:
            for stage in stages:
                stage(work)
                if work.skipped or work.error is not None:
                    break
        except Exception as exc:
            logger.exception("reader failed path=%s", work.path)
            work.error = f"{work.path}: not read ({exc})"
            work.skipped = True  # not to be recorded as failed: abandoned below
        work.read_s += time.perf_counter() - start
        if work.skipped:
            kind: EventKind = (
                "deferred" if work.deferred else "abandoned" if work.error else "skipped"
            )
            self._emit(work.event(kind))
        else:
            self._faults.reached("read")
            if work.error is None:
                self._emit(work.event("read", work.read_s))

    def _more_frames(self, work: FrameWork) -> list[FrameWork]:
        """A work for each of the file's later frames, announced as received; the file's
        read time is shared among all its frames."""
        if not work.more:
            return []
        frames, work.more = work.more, []
        share = work.read_s / (len(frames) + 1)
        work.read_s = share
        extra = [
            dataclasses.replace(
                work, frame=frame, frame_index=frame.frame_index, read_s=share, model_input=None
            )
            for frame in frames
        ]
        self._intake.more_frames(len(extra))
        for one in extra:
            self._emit(one.event("received"))
        return extra

    # ----------------------------------------------------------------- inference

    def _inference_loop(self) -> None:
        infer = self.stages.infer
        try:
            while True:
                if self._abort.is_set():
                    self._abandon_queued()
                if len(self.queue) == 0:
                    infer.idle()
                batch = self.queue.take_batch(
                    infer.frames_per_call(), FrameWork.batch_key, timeout_s=0.1
                )
                if not batch:
                    if self._intake.closing.is_set() and self._drained():
                        return
                    continue
                infer(batch)
                self._faults.reached("infer")
                assert self._segmenters is not None
                for work in batch:  # segmented in parallel, recorded in this order
                    if work.error is None:
                        self._emit(work.event("inferred", work.infer_s))
                    self._results.put((work, self._segmenters.submit(self._segment, work)))
        finally:
            self._inference_done.set()

    def _drained(self) -> bool:
        with self._lock:
            reading = self._reading
        return reading == 0 and len(self.queue) == 0

    def _abandon_queued(self) -> None:
        for work in self.queue.clear():
            work.error = "stopping gave up before it was inferred"
            self._emit(work.event("abandoned"))
            self._intake.finished()

    # ----------------------------------------------------------------- segmenters

    def _segment(self, work: FrameWork) -> None:
        if work.error is not None:
            return
        start = time.perf_counter()
        for stage in self.stages.segment:
            stage(work)
            if work.error is not None:
                return
        self._emit(work.event("segmented", time.perf_counter() - start))

    # ----------------------------------------------------------------- recorder

    def _record_loop(self) -> None:
        sinks = self.stages.sinks
        try:
            for sink in sinks:
                sink.open()
        except BaseException as exc:
            self._sinks_error = exc
            self._sinks_open.set()
            self._close_sinks()
            return
        self._sinks_open.set()
        # Only now: ZeroMQ's I/O and CURVE threads and pyzmq's zero-copy collector, started
        # when the publish sink opened its socket, inherit this thread's policy and must
        # keep normal priority to serve every subscriber.
        if self._host_idle:
            run_when_cores_are_idle()
        try:
            while True:
                try:
                    work, segmented = self._results.get(timeout=0.1)
                except queue.Empty:
                    if self._inference_done.is_set() and self._results.empty():
                        return
                    continue
                try:
                    segmented.result()
                except Exception as exc:  # a stage raised past its own handling
                    logger.exception("segmentation failed path=%s", work.path)
                    work.error = work.error or f"{work.path}: segmentation failed ({exc})"
                try:
                    self._record(work)
                finally:
                    self._intake.finished()
        finally:
            self._close_sinks()

    def _record(self, work: FrameWork) -> None:
        if self._abort.is_set():
            work.error = "stopping gave up before it was recorded"
            self._emit(work.event("abandoned"))
            return
        failed = work.segmentation is None or work.error is not None
        try:
            for sink in self.stages.sinks:
                sink(work)
                if sink.event is not None:
                    self._emit(work.event(sink.event))
        except Exception as exc:
            if self._give_up():
                self._abort.set()
                logger.debug("recording given up path=%s: %s", work.path, exc)
            else:
                logger.exception("recording failed path=%s", work.path)
            if work.frame_id is None:
                work.error = f"not recorded ({exc})"
                self._emit(work.event("abandoned"))
            else:
                work.error = f"recorded, not published ({exc})"
                self._emit(work.event("failed"))
            return
        self._emit(work.event("failed" if failed else "published"))

    def _close_sinks(self) -> None:
        for sink in self.stages.sinks:
            try:
                sink.close()
            except Exception:
                logger.exception("closing %s failed", type(sink).__name__)
