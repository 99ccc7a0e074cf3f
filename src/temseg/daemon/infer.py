"""Stage *infer*: the engine's probability map for a batch of frames, on one thread.

Reads ``work.frame``, ``work.material`` and ``work.model_input``; fills
``model``, ``threshold`` and ``threshold_source`` (the material's threshold
with that model), ``probability`` (on the model's grid), ``frame_shape`` and
``infer_s`` (the call's time divided among its frames). An engine failure
fails the batch's frames, never the daemon.

The database's active model and calibrations are followed here: checked
before the first batch after an idle spell, and every
:data:`MODEL_CHECK_S` seconds under load (thresholds are cached in between,
so a frame costs no query). Frames that arrived together share one engine
call: up to ``batch_size`` frames with an engine that batches (a GPU), one
at a time otherwise (:func:`~temseg.daemon.models.frames_per_call`).

With ``masks_on_device`` (the daemon sends no probability maps), a batch
whose frames are all :func:`~temseg.daemon.prepare.on_device` for the
serving model goes to the engine raw and comes back as masks: ``mask``
(uint8 0/1 on the frame's grid) is filled instead of ``probability``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

from sqlalchemy.exc import OperationalError

from temseg.daemon.database import retry_locked
from temseg.daemon.models import ModelServer, ServedModel, frames_per_call
from temseg.daemon.observers import DaemonStats
from temseg.daemon.prepare import model_input_for, on_device
from temseg.daemon.work import FrameWork
from temseg.inference import ModelInput, input_key, run_inputs

logger = logging.getLogger("temseg.daemon")

MODEL_CHECK_S = 2.0  # seconds between checks of the active model and calibrations under load


class InferStage:
    """See the module docstring. ``tile`` and ``overlap`` in pixels; ``on_swap()`` runs on
    this thread after a new model was swapped in; ``stats`` gets the engine calls and the
    model swaps and rejects."""

    def __init__(
        self,
        models: ModelServer,
        *,
        batch_size: int,
        masks_on_device: bool,
        tile: int,
        overlap: int,
        give_up: Callable[[], bool],
        on_swap: Callable[[], None],
        stats: DaemonStats,
        max_pixels: int | None = None,
    ) -> None:
        self._max_pixels = max_pixels
        self._models = models
        self._batch_size = batch_size
        self._masks_on_device = masks_on_device
        self._tile = tile
        self._overlap = overlap
        self._give_up = give_up
        self._on_swap = on_swap
        self._stats = stats
        self._check_due = True  # check the database before the next batch
        self._last_check = 0.0  # time.monotonic() of the last check

    def frames_per_call(self) -> int:
        """How many frames the next call may take, for the model serving now."""
        return frames_per_call(self._models.current.engine, self._batch_size)

    def idle(self) -> None:
        """No frame is waiting: the next one sees the database as it is then."""
        self._check_due = True

    def __call__(self, batch: list[FrameWork]) -> None:
        if batch[0].frame is None:  # failed before: nothing to infer (one batch key)
            return
        now = time.monotonic()
        if self._check_due or now - self._last_check >= MODEL_CHECK_S:
            self._check_due = False
            self._last_check = now
            self._check_models()
        model = self._models.current
        for work in batch:
            work.model = model
        try:
            for work in batch:
                work.threshold, work.threshold_source = retry_locked(
                    partial(self._models.threshold, work.material),
                    "threshold lookup",
                    self._give_up,
                )
            start = time.perf_counter()
            if self._masks_on_device and all(
                work.frame is not None and on_device(work.frame, model, self._tile)
                for work in batch
            ):
                self._infer_masks(batch, model)
                self._count(batch, time.perf_counter() - start)
                return
            inputs = [self._model_input(work, model) for work in batch]
            probabilities = run_inputs(inputs, model.engine, tile=self._tile, overlap=self._overlap)
            for work, probability, x in zip(batch, probabilities, inputs, strict=True):
                work.probability = probability
                work.frame_shape = x.frame_shape
                work.model_input = None  # its memory goes now
            self._count(batch, time.perf_counter() - start)
        except Exception as exc:  # an engine failure fails these frames, not the daemon
            logger.exception("inference failed for %d frame(s)", len(batch))
            for work in batch:
                work.error = f"{work.path}: inference failed ({exc})"
                work.probability = work.mask = None

    def _infer_masks(self, batch: list[FrameWork], model: ServedModel) -> None:
        """Masks of raw frames of one shape, thresholded by the engine on its device."""
        frames = [work.frame for work in batch]
        assert all(frame is not None for frame in frames)  # on_device() checked them
        bundle = model.bundle
        masks = model.engine.predict_masks(  # type: ignore[attr-defined]
            [frame.image for frame in frames],  # type: ignore[union-attr]
            bundle.normalisation,
            bundle.config.size_multiple,
            [float(work.threshold or 0.0) for work in batch],
        )
        for work, mask in zip(batch, masks, strict=True):
            work.mask = mask
            work.frame_shape = mask.shape
            work.model_input = None

    def _count(self, batch: list[FrameWork], elapsed_s: float) -> None:
        """The call's time divided among its frames, and the batch in the statistics."""
        for work in batch:
            work.infer_s = elapsed_s / len(batch)
        self._stats.batches += 1
        self._stats.largest_batch = max(self._stats.largest_batch, len(batch))

    def _model_input(self, work: FrameWork, model: ServedModel) -> ModelInput:
        """The reader's input, or a new one when the model changed in between."""
        assert work.frame is not None
        x = work.model_input
        if x is None or x.made_for != input_key(model.bundle):
            x = model_input_for(work.frame, model, self._max_pixels)
        return x

    def _check_models(self) -> None:
        """Follow the database's active model; forget cached thresholds (new calibrations)."""
        models = self._models
        try:
            if models.refresh():
                self._stats.model_swaps += 1
                self._on_swap()
        except OperationalError as exc:
            logger.warning("active model check skipped: database busy (%s)", exc.orig)
            self._check_due = True
        except Exception:  # the serving model stays; the next batch checks again
            logger.exception("active model check failed")
            self._check_due = True
        self._stats.model_rejects = models.rejects
