"""Stage *prepare*: the model input of a decoded frame, made off the inference thread.

Reads ``work.frame`` and the model serving now; fills ``model_input``
(normalised, resampled to the model's pixel size, padded; in page-locked
memory for a GPU engine). If the model changes before the frame is
inferred, the inference stage prepares it again (:func:`model_input_for`).
"""

from __future__ import annotations

from collections.abc import Callable

from temseg.daemon.models import ServedModel
from temseg.daemon.work import FrameWork
from temseg.engine import input_allocator
from temseg.frames import Frame
from temseg.inference import ModelInput, prepare_input


def model_input_for(frame: Frame, model: ServedModel, max_pixels: int | None = None) -> ModelInput:
    """``frame`` normalised, resampled and padded for ``model``, in memory its engine reads
    directly (page-locked for a GPU engine); at most ``max_pixels`` on the model's grid."""
    return prepare_input(
        frame.image,
        model.bundle,
        frame.pixel_nm_yx,
        allocate=input_allocator(model.engine),
        max_pixels=max_pixels,
    )


class PrepareStage:
    """See the module docstring; ``current_model()`` is the model serving now."""

    def __init__(
        self, current_model: Callable[[], ServedModel], max_pixels: int | None = None
    ) -> None:
        self._current_model = current_model
        self._max_pixels = max_pixels

    def __call__(self, work: FrameWork) -> None:
        if work.frame is None:
            return
        try:
            work.model_input = model_input_for(work.frame, self._current_model(), self._max_pixels)
        except Exception as exc:
            work.error = f"{work.path}: cannot prepare the frame for the model ({exc})"
            work.frame = None
