"""Frame -> particle probability on the frame's own pixel grid -> segmentation.

The steps follow the model bundle: normalise as it was trained, resample to
its training pixel size (when both pixel sizes are known), pad to the
network's size multiple (:func:`prepare_input`), run the engine, over
overlapping tiles for large frames (:func:`run_inputs`), crop, and resample
the probability back onto the original grid (:func:`to_frame_grid`). The
daemon runs the first and last steps on other threads than the engine's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from temseg.engine import input_allocator
from temseg.engine.base import Engine
from temseg.frames.normalise import normalise
from temseg.frames.read import Frame
from temseg.frames.resample import model_grid_shape, resample
from temseg.frames.tiling import pad_to_multiple, predict_tiled
from temseg.model.bundle import ModelBundle
from temseg.segment import Segmentation, segment_probability

CPU_TILE = 2048  # pixels
GPU_TILE = 4096  # pixels
#: Largest frame (pixels) resampling onto the model's grid may make: 16384 x 16384, 1 GiB as
#: float32. A frame of 20 nm pixels for a model trained at 0.05 nm would grow 400-fold per
#: axis; such a frame is refused with its sizes instead of exhausting memory.
MAX_MODEL_GRID_PIXELS = 2**28


def default_tile(device: str) -> int:
    """Largest side (pixels, model grid) a frame may have to go through the network whole.

    2048 on CPU, where a whole 4096 px frame needs about 3.3 GiB in fp32 and
    is no faster than its tiles; 4096 on a GPU (``device`` "cuda" or
    "cuda:N"), so that 4096 x 4096 camera frames take one engine call each.
    """
    return GPU_TILE if device.startswith("cuda") else CPU_TILE


@dataclass(frozen=True)
class ModelInput:
    """A frame as the engine takes it: normalised, on the model's pixel grid, padded.

    ``padded`` is float32 with sides that are multiples of ``multiple``, the
    model's ``size_multiple``; ``grid_shape`` is the model-grid shape before
    padding and ``frame_shape`` the frame's own (pixels). ``made_for`` is
    the :func:`input_key` of the bundle it was prepared for. ``blank`` marks
    a frame without contrast (every pixel equal), which :func:`run_inputs`
    gives probability 0 without running the engine: the network would see
    only the edges of its zero padding there, and find "particles" along them.
    """

    padded: np.ndarray
    grid_shape: tuple[int, int]
    frame_shape: tuple[int, int]
    multiple: int
    made_for: tuple[Any, ...]
    blank: bool = False


def is_blank(image: np.ndarray) -> bool:
    """True when every pixel of ``image`` has the same value.

    A strided sample of about 4096 pixels settles almost every real frame;
    only a frame whose sample is constant is checked in full.
    """
    h, w = image.shape[:2]
    sample = image[:: max(1, h // 64), :: max(1, w // 64)]
    first = sample.flat[0]
    if np.any(sample != first):
        return False
    return bool(np.all(image == first))


def input_key(bundle: ModelBundle) -> tuple[Any, ...]:
    """What a :class:`ModelInput` depends on: normalisation, pixel size (nm), size multiple."""
    return (bundle.normalisation, bundle.pixel_nm, bundle.config.size_multiple)


class GridTooLarge(ValueError):
    """A frame's grid at the model's pixel size exceeds ``max_pixels``."""


def prepare_input(
    image: np.ndarray,
    bundle: ModelBundle,
    pixel_nm: float | tuple[float, float] | None,
    *,
    allocate: Callable[[tuple[int, ...]], np.ndarray] | None = None,
    max_pixels: int | None = None,
) -> ModelInput:
    """Normalise ``image`` as ``bundle`` was trained, resample it to its pixel size, pad it.

    ``pixel_nm`` is the frame's pixel size (nm per pixel), one number or
    (y, x) for non-square pixels; unknown (None) leaves the grid as it is.
    ``allocate(shape)`` gives the float32 array the result goes into (see
    :func:`temseg.engine.input_allocator`); a frame that needs neither
    resampling nor padding is normalised straight into it.
    ``max_pixels`` bounds the model's grid (default
    :data:`MAX_MODEL_GRID_PIXELS`), checked before anything is allocated: a
    small frame claiming a tiny ``pixel_nm`` would otherwise be upsampled to
    an arbitrarily large grid; above it, :class:`GridTooLarge` (a ValueError).
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    multiple = bundle.config.size_multiple
    grid = model_grid_shape(image.shape, pixel_nm, bundle.pixel_nm)
    limit = MAX_MODEL_GRID_PIXELS if max_pixels is None else max_pixels
    if grid[0] * grid[1] > limit:
        above = f"the limit {limit}" if max_pixels is None else f"max_pixels ({max_pixels})"
        if grid != image.shape and pixel_nm is not None and bundle.pixel_nm is not None:
            how = (
                f"resampling {image.shape[0]} x {image.shape[1]} px of {pixel_nm} nm to the "
                f"model's {bundle.pixel_nm} nm per pixel would make {grid[0]} x {grid[1]} px"
            )
        else:
            how = f"the frame has {grid[0]} x {grid[1]} px"
        raise GridTooLarge(f"{how} (above {above}); check the frame's pixel size or override it")
    if (
        allocate is not None
        and grid == image.shape
        and not (grid[0] % multiple or grid[1] % multiple)
    ):
        padded = normalise(image, bundle.normalisation, out=allocate(grid))
        h, w = grid
    else:
        x = normalise(image, bundle.normalisation)
        x = x if grid == x.shape else resample(x, grid, order=1)
        padded, (h, w) = pad_to_multiple(x, multiple)
        if allocate is not None:
            buffer = allocate(padded.shape)
            buffer[...] = padded
            padded = buffer
    return ModelInput(
        padded=padded,
        grid_shape=(h, w),
        frame_shape=(image.shape[0], image.shape[1]),
        multiple=multiple,
        made_for=input_key(bundle),
        blank=is_blank(image),
    )


def run_inputs(
    inputs: list[ModelInput], engine: Engine, *, tile: int = 2048, overlap: int = 64
) -> list[np.ndarray]:
    """Probabilities on the model grid (cropped, not yet on the frames' grids), in order.

    Inputs of equal padded shape within ``tile`` pixels go through the engine
    together, one call per shape; larger ones are tiled one by one
    (``tile`` and ``overlap`` in pixels of the model grid); blank ones get
    probability 0 without the engine.
    """
    allocate = input_allocator(engine)
    groups: dict[tuple[int, ...], list[int]] = {}
    results: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(inputs)
    for i, item in enumerate(inputs):
        if item.blank:
            results[i] = np.zeros(item.grid_shape, dtype=np.float32)
        else:
            groups.setdefault(item.padded.shape, []).append(i)
    for shape, members in groups.items():
        multiple = inputs[members[0]].multiple
        if max(shape) <= max(multiple, tile // multiple * multiple):
            if len(members) == 1:
                batch = inputs[members[0]].padded[None, None]  # a view, no copy
            else:
                frames = [inputs[i].padded for i in members]
                buffer = None if allocate is None else allocate((len(frames), *shape))
                batch = np.stack(frames, out=buffer)[:, None]
            out = np.asarray(engine.predict(batch))
            for i, probability in zip(members, out, strict=True):
                h, w = inputs[i].grid_shape
                results[i] = probability[:h, :w]
        else:
            for i in members:
                h, w = inputs[i].grid_shape
                whole = predict_tiled(
                    inputs[i].padded, engine.predict, tile=tile, overlap=overlap, multiple=multiple
                )
                results[i] = whole[:h, :w]
    return results


def to_frame_grid(probability: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """A model-grid probability resampled onto the frame's grid, float32 in [0, 1].

    The engines' sigmoid output is already within [0, 1] (tiles are cropped,
    not blended), so only a resampled map is clipped, against rounding.
    """
    if probability.shape != frame_shape:
        probability = np.clip(resample(probability, frame_shape, order=1), 0.0, 1.0)
    return probability.astype(np.float32, copy=False)


def to_float16(probability: np.ndarray) -> np.ndarray:
    """A float16 copy of ``probability`` (float32), as the mask messages carry it.

    Rounded to nearest as numpy's ``astype`` rounds, bit for bit, but converted by
    PyTorch's vectorised loop: 6-12 ms for a 4096 x 4096 px map where numpy takes
    45-90 ms on one core (``benchmarks/RESULTS.md``).
    """
    import torch

    source = np.ascontiguousarray(probability, dtype=np.float32)
    out = np.empty(source.shape, dtype=np.float16)
    torch.from_numpy(out).copy_(torch.from_numpy(source))
    return out


def predict_probability(
    image: np.ndarray,
    engine: Engine,
    bundle: ModelBundle,
    *,
    pixel_nm: float | tuple[float, float] | None = None,
    tile: int = 2048,
    overlap: int = 64,
) -> np.ndarray:
    """Particle probability, float32 (H, W) in [0, 1], on the grid of ``image``.

    ``pixel_nm`` is the frame's pixel size (nm per pixel); ``tile`` and
    ``overlap`` are in pixels of the model grid. Frames larger than ``tile``
    are run tile by tile, so memory stays bounded for any frame size.
    """
    return predict_batch([image], engine, bundle, pixel_nms=[pixel_nm], tile=tile, overlap=overlap)[
        0
    ]


def predict_batch(
    images: list[np.ndarray],
    engine: Engine,
    bundle: ModelBundle,
    *,
    pixel_nms: list[float | tuple[float, float] | None],
    tile: int = 2048,
    overlap: int = 64,
) -> list[np.ndarray]:
    """Probabilities of several frames, as :func:`predict_probability` gives them one by one.

    Frames whose padded model-grid shapes are equal and within ``tile`` pixels
    go through the engine together, in one call per shape; larger frames are
    tiled one by one.
    """
    if len(images) != len(pixel_nms):
        raise ValueError(f"{len(images)} images but {len(pixel_nms)} pixel sizes")
    inputs = [prepare_input(im, bundle, p) for im, p in zip(images, pixel_nms, strict=True)]
    probabilities = run_inputs(inputs, engine, tile=tile, overlap=overlap)
    return [to_frame_grid(p, x.frame_shape) for p, x in zip(probabilities, inputs, strict=True)]


@dataclass
class FrameResult:
    """Segmentation of one frame with its probability map and timings (ms)."""

    segmentation: Segmentation
    probability: np.ndarray
    timing_ms: dict[str, float]
    pixel_nm: float | None
    material: str | None
    threshold: float
    pixel_nm_yx: tuple[float, float] | None = None
    frame_index: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary of the frame.

        Keys: frame_index, shape ([rows, cols]), material, threshold,
        n_particles, area_fraction, pixel_nm (nm per pixel; for non-square
        pixels the side of the square of equal area), pixel_nm_yx ([y, x] nm,
        null when unknown), particles (nm values only when the pixel size is known), timing_ms.
        """
        seg = self.segmentation
        return {
            "frame_index": self.frame_index,
            "shape": [int(n) for n in self.probability.shape],
            "material": self.material,
            "threshold": self.threshold,
            "n_particles": seg.n_particles,
            "area_fraction": seg.area_fraction,
            "pixel_nm": self.pixel_nm,
            "pixel_nm_yx": None if self.pixel_nm_yx is None else list(self.pixel_nm_yx),
            "particles": [
                {k: v for k, v in p.to_dict().items() if v is not None} for p in seg.particles
            ],
            "timing_ms": {k: round(v, 3) for k, v in self.timing_ms.items()},
        }


def segment_frame(
    frame: Frame,
    engine: Engine,
    bundle: ModelBundle,
    *,
    threshold: float,
    min_area_px: int = 1,
    min_diameter_nm: float = 0.0,
    tile: int = 2048,
    overlap: int = 64,
    material: str | None = None,
) -> FrameResult:
    """Probability, mask and particles of a frame.

    ``min_area_px`` and ``min_diameter_nm`` (nm) are the smallest particle, as in
    :func:`~temseg.segment.segment_mask`; ``material`` overrides the frame's own;
    ``timing_ms`` has "read" (from the frame), "infer" (probability) and "total"
    (read + infer + particles).
    """
    start = time.perf_counter()
    probability = predict_probability(
        frame.image, engine, bundle, pixel_nm=frame.pixel_nm_yx, tile=tile, overlap=overlap
    )
    inferred = time.perf_counter()
    segmentation = segment_probability(
        probability, threshold, frame.pixel_nm, min_area_px, min_diameter_nm=min_diameter_nm
    )
    infer_ms = (inferred - start) * 1e3
    segment_ms = (time.perf_counter() - inferred) * 1e3
    timing_ms = {
        "read": frame.read_ms,
        "infer": infer_ms,
        "segment": segment_ms,
        "total": frame.read_ms + infer_ms + segment_ms,
    }
    return FrameResult(
        segmentation=segmentation,
        probability=probability,
        timing_ms=timing_ms,
        pixel_nm=frame.pixel_nm,
        material=material if material is not None else frame.material,
        threshold=float(threshold),
        pixel_nm_yx=frame.pixel_nm_yx,
        frame_index=frame.frame_index,
    )
