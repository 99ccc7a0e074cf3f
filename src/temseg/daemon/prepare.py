"""Stage *prepare*: the model input of a decoded frame, made off the inference thread.

Reads ``work.frame`` and the model serving now; fills ``model_input``
(normalised, resampled to the model's pixel size, padded; in page-locked
memory for a GPU engine). If the model changes before the frame is
inferred, the inference stage prepares it again (:func:`model_input_for`).
A frame that an engine finishes on its device (:func:`on_device`) needs no
model input: the engine takes its raw counts.
"""

from __future__ import annotations

from collections.abc import Callable

from temseg.daemon.models import ServedModel
from temseg.daemon.work import FrameWork
from temseg.engine import input_allocator
from temseg.engine.device_frame import finishes_on_device
from temseg.frames import Frame
from temseg.frames.resample import model_grid_shape
from temseg.inference import ModelInput, is_blank, prepare_input


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


def on_device(frame: Frame, model: ServedModel, tile: int) -> bool:
    """Whether ``model``'s engine takes ``frame`` raw and gives its mask back
    (``predict_masks``): an engine with that ability, a frame that
    :func:`~temseg.engine.device_frame.finishes_on_device` with contrast, and
    padded sides within ``tile`` (pixels), so that it goes through the network whole."""
    if not getattr(model.engine, "masks_on_device", False):
        return False
    bundle, image = model.bundle, frame.image
    multiple = bundle.config.size_multiple
    grid = model_grid_shape(image.shape, frame.pixel_nm_yx, bundle.pixel_nm)
    largest = max(multiple, tile // multiple * multiple)
    return (
        finishes_on_device(image, bundle.normalisation, grid, multiple)
        and max(-(-side // multiple) * multiple for side in grid) <= largest
        and not is_blank(image)
    )


class PrepareStage:
    """See the module docstring; ``current_model()`` is the model serving now. With
    ``masks_on_device`` (the daemon sends no probability maps) frames :func:`on_device`
    (``tile`` pixels) get no model input; ``max_pixels`` bounds the model's grid."""

    def __init__(
        self,
        current_model: Callable[[], ServedModel],
        *,
        masks_on_device: bool,
        tile: int,
        max_pixels: int | None = None,
    ) -> None:
        self._current_model = current_model
        self._masks_on_device = masks_on_device
        self._tile = tile
        self._max_pixels = max_pixels

    def __call__(self, work: FrameWork) -> None:
        if work.frame is None:
            return
        try:
            model = self._current_model()
            if self._masks_on_device and on_device(work.frame, model, self._tile):
                return
            work.model_input = model_input_for(work.frame, model, self._max_pixels)
        except Exception as exc:
            work.error = f"{work.path}: cannot prepare the frame for the model ({exc})"
            work.frame = None
