"""The benchmark's offline stages: synthetic frames, bare engine, TIFF decode, naive loop."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from temseg.bench.stats import Clock, StageResult, reset_gpu_peak, timed_stage
from temseg.engine import Engine, input_allocator
from temseg.engine.base import resolve_threads
from temseg.frames import Frame, read_frame
from temseg.frames.tiling import pad_to_multiple, predict_tiled
from temseg.frames.write import write_frame_tiff
from temseg.inference import prepare_input
from temseg.model.bundle import ModelBundle
from temseg.synth import DEFAULT_PIXEL_NM, frame_name, frame_seed, simulate_frame

MATERIALS = ("Au", "CdSe")
ENGINE_WARMUP_CALLS = 2
UNIQUE_FRAMES = 8  # simulated frames at most; the rest are shifted copies
UNIQUE_PIXELS = 8 * 1024 * 1024  # and at most this many simulated pixels (a 4096 px frame: ~5 s)


def unique_frames(size: int) -> int:
    """How many ``size`` px frames :func:`write_frames` simulates (even: materials alternate)."""
    fit = min(UNIQUE_FRAMES, UNIQUE_PIXELS // (size * size))
    return max(len(MATERIALS), fit - fit % len(MATERIALS))


def write_frames(
    folder: Path,
    count: int,
    size: int,
    *,
    seed: int = 0,
    pixel_nm: float = DEFAULT_PIXEL_NM,
    on_frame: Callable[[int], object] | None = None,
) -> list[Path]:
    """Simulate ``count`` uint16 frames of ``size`` x ``size`` pixels into ``folder``.

    Materials alternate Au, CdSe; the first :func:`unique_frames` are simulated,
    later ones reuse them shifted by ``i`` columns. Each TIFF carries ``pixel_nm`` (nm per
    pixel) and ``material``. ``on_frame(i)`` is called after frame ``i``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    simulated: list[np.ndarray] = []
    unique = unique_frames(size)
    for i in range(count):
        material = MATERIALS[i % len(MATERIALS)]
        if i < unique:
            seed_i = frame_seed(seed, material, i)
            simulated.append(simulate_frame(material, size, seed_i, pixel_nm=pixel_nm).image)
            image = simulated[i]
        else:  # large frames take seconds to simulate: reuse one, shifted so its bytes differ
            image = np.roll(simulated[i % unique], i, axis=1)
        path = folder / f"{frame_name(material, i)}.tif"
        write_frame_tiff(path, image, metadata={"material": material}, pixel_nm=pixel_nm)
        paths.append(path)
        if on_frame is not None:
            on_frame(i)
    return paths


def model_input(frame: Frame, bundle: ModelBundle) -> np.ndarray:
    """The frame as the engine sees it: normalised, on the model's pixel grid (float32 2-D)."""
    x = prepare_input(frame.image, bundle, frame.pixel_nm)
    height, width = x.grid_shape
    return x.padded[:height, :width]


def _engine_array(engine: Engine, x: np.ndarray) -> np.ndarray:
    """``x`` in the memory the daemon gives ``engine`` its input in."""
    allocate = input_allocator(engine)
    if allocate is None:
        return x
    out = allocate(x.shape)
    out[...] = x
    return out


def bench_engine(
    inputs: list[np.ndarray],
    engine: Engine,
    bundle: ModelBundle,
    device: str,
    *,
    tile: int,
    overlap: int,
) -> StageResult:
    """(a) The bare engine, one frame per call, on preloaded model-grid arrays.

    Arrays are padded to the model's size multiple beforehand, in the memory
    the daemon's readers use for this engine (page-locked for a GPU engine,
    :func:`temseg.engine.input_allocator`); a frame larger than ``tile``
    pixels (model grid) is run tile by tile as the daemon does.
    ``ENGINE_WARMUP_CALLS`` untimed calls come first.
    """
    multiple = bundle.config.size_multiple
    tiled = max(inputs[0].shape) > tile

    if tiled:
        batches = inputs

        def run(x: np.ndarray) -> None:
            predict_tiled(x, engine.predict, tile=tile, overlap=overlap, multiple=multiple)

    else:
        batches = [
            _engine_array(engine, pad_to_multiple(x, multiple)[0][None, None]) for x in inputs
        ]

        def run(x: np.ndarray) -> None:
            engine.predict(x)

    for i in range(ENGINE_WARMUP_CALLS):
        run(batches[i % len(batches)])
    reset_gpu_peak(device)
    times = []
    clock = Clock()
    for x in batches:
        t = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t) * 1e3)
    details = {"engine": engine.name, "tiled": tiled, "warmup_calls": ENGINE_WARMUP_CALLS}
    return timed_stage("engine", "bare engine, 1 frame/call", clock, times, device, details)


def bench_engine_batched(
    inputs: list[np.ndarray], engine: Engine, bundle: ModelBundle, device: str, batch: int
) -> StageResult:
    """The bare engine on batches of up to ``batch`` frames, as the daemon groups a burst.

    Per-frame times are each call's time divided by its frames.
    """
    multiple = bundle.config.size_multiple
    padded = [pad_to_multiple(x, multiple)[0] for x in inputs]
    batches = [
        _engine_array(engine, np.stack(padded[i : i + batch])[:, None])
        for i in range(0, len(padded), batch)
    ]
    engine.predict(batches[0])
    reset_gpu_peak(device)
    times: list[float] = []
    clock = Clock()
    for x in batches:
        t = time.perf_counter()
        engine.predict(x)
        times.extend([(time.perf_counter() - t) * 1e3 / len(x)] * len(x))
    label = f"bare engine, {batch} frames/call"
    details = {"engine": engine.name, "batch": batch, "calls": len(batches)}
    return timed_stage("engine_batched", label, clock, times, device, details)


def bench_decode(paths: list[Path], device: str) -> tuple[StageResult, list[Frame]]:
    """(b) TIFF decode alone: :func:`temseg.frames.read_frame` per file; also the frames read."""
    read_frame(paths[0])  # imports and the first file's page cache, untimed
    frames, times = [], []
    clock = Clock()
    for path in paths:
        t = time.perf_counter()
        frames.append(read_frame(path))
        times.append((time.perf_counter() - t) * 1e3)
    return timed_stage("decode", "TIFF decode (read_frame)", clock, times, device), frames


def bench_naive(
    paths: list[Path], bundle: ModelBundle, device: str, threads: int, threshold: float = 0.5
) -> StageResult:
    """(c) What a notebook does: a plain loop, one frame at a time, nothing overlapped.

    Each file is read with ``tifffile.imread``, divided by its maximum, run
    through the bundle's U-Net in PyTorch fp32 eager on ``device`` (already
    resolved), softmax, thresholded at ``threshold`` and copied back to the
    host as a uint8 mask. One untimed frame warms the model up. ``threads``
    sets PyTorch's CPU threads (0 = all cores).
    """
    import tifffile
    import torch

    if device == "cpu":
        torch.set_num_threads(resolve_threads(threads))
    model = copy.deepcopy(bundle.model).to(device).eval()

    def segment(model: torch.nn.Module, path: Path) -> np.ndarray:
        image = tifffile.imread(path).astype(np.float32)
        x = torch.from_numpy(image / image.max())[None, None].to(device)
        with torch.no_grad():
            probability = torch.softmax(model(x), dim=1)[0, -1]
        return (probability > threshold).to(torch.uint8).cpu().numpy()

    segment(model, paths[0])
    reset_gpu_peak(device)
    times, particle_px = [], 0
    clock = Clock()
    for path in paths:
        t = time.perf_counter()
        particle_px += int(segment(model, path).sum())
        times.append((time.perf_counter() - t) * 1e3)
    result = timed_stage(
        "naive",
        "naive loop (tifffile + torch eager fp32)",
        clock,
        times,
        device,
        {"threshold": threshold, "particle_pixels": particle_px},
    )
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result
