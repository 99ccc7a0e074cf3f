"""Inference backends behind one small interface (:class:`Engine`).

``backend="auto"`` picks, deterministically: TensorRT when it imports and a
CUDA device is present; else PyTorch on CUDA; else, on CPU, the backend named
in :data:`CPU_DEFAULT_BACKEND` (the faster one in ``benchmarks/bench_engines.py``).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from temseg.engine.base import Engine, EngineError, resolve_device
from temseg.model.bundle import ModelBundle
from temseg.options import Backend, Precision, choices

log = logging.getLogger(__name__)

BACKENDS = choices(Backend)
CPU_DEFAULT_BACKEND: Backend = "onnxruntime"


def tensorrt_importable() -> bool:
    """True when the ``tensorrt`` package and its libraries import."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    from temseg.engine.tensorrt_engine import import_tensorrt

    try:
        import_tensorrt()
    except EngineError:
        return False
    return True


def check_backend(backend: str, device: str) -> None:
    """Raise :class:`EngineError` now where :func:`load_engine` would for ``backend``
    on ``device`` before it loads anything: an unknown backend, or TensorRT not
    installed or without a CUDA device. Commands that do other work first (the
    benchmark writes frames and runs a baseline) check this before they start.
    """
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "tensorrt":
        from temseg.engine.tensorrt_engine import cuda_device, import_tensorrt

        import_tensorrt()
        cuda_device(device)


def choose_backend(device: str, *, tensorrt_available: bool) -> Backend:
    """The concrete backend ``auto`` means on a resolved ``device`` ("cpu" or "cuda[:N]")."""
    if device.startswith("cuda"):
        return "tensorrt" if tensorrt_available else "torch"
    return CPU_DEFAULT_BACKEND


def load_engine(
    bundle: ModelBundle,
    backend: str = "auto",
    device: str = "auto",
    threads: int = 0,
    *,
    compile: bool = False,
    compile_mode: str = "max-autotune-no-cudagraphs",
    precision: Precision | None = None,
    cache_dir: str | Path | None = None,
    max_size: int = 4096,
    batch: int = 4,
) -> Engine:
    """Create an engine for ``bundle``. ``backend`` is one of :data:`BACKENDS`.

    ``device``: "auto", "cpu", "cuda" or "cuda:N". ``threads``: CPU threads
    (0 = all cores). ``compile``: ``torch.compile`` the PyTorch CUDA engine
    with ``compile_mode`` ("max-autotune-no-cudagraphs" or "reduce-overhead").
    ``precision``: "fp16" or "fp32" (default fp16 on CUDA, fp32 on CPU).
    ``cache_dir``: where ONNX exports and TensorRT plans are kept (default
    ``$XDG_CACHE_HOME/temseg/engines``). ``max_size`` (pixels per side) and
    ``batch`` (frames) bound the TensorRT optimisation profile.
    """
    resolved = resolve_device(device)
    check_backend(backend, resolved)
    on_cuda = resolved.startswith("cuda")
    if backend == "auto":
        backend = choose_backend(resolved, tensorrt_available=on_cuda and tensorrt_importable())
        if backend == "tensorrt":
            try:
                return _tensorrt(bundle, resolved, precision, cache_dir, max_size, batch)
            except EngineError as exc:
                log.warning("TensorRT engine unavailable (%s); using PyTorch on CUDA", exc)
                backend = "torch"
        if compile and not on_cuda:
            log.warning("torch.compile is only used on CUDA; the CPU engine runs eager")
            compile = False
    if backend == "torch":
        from temseg.engine.torch_engine import TorchEngine

        return TorchEngine(
            bundle,
            threads,
            device=resolved,
            precision=precision,
            compile=compile,
            compile_mode=compile_mode,
        )
    if backend == "onnxruntime":
        from temseg.engine.onnx_engine import OnnxRuntimeEngine

        if precision not in (None, "fp32"):
            raise EngineError(f"the onnxruntime engine runs fp32 only, not {precision}")

        return OnnxRuntimeEngine(bundle, threads, device=resolved, cache_dir=cache_dir)
    return _tensorrt(bundle, resolved, precision, cache_dir, max_size, batch)


def _tensorrt(
    bundle: ModelBundle,
    device: str,
    precision: str | None,
    cache_dir: str | Path | None,
    max_size: int,
    batch: int,
) -> Engine:
    from temseg.engine.tensorrt_engine import TensorRTEngine

    return TensorRTEngine(
        bundle,
        device=device,
        precision=precision or "fp16",
        cache_dir=cache_dir,
        max_size=max_size,
        batch=batch,
    )


def input_allocator(engine: Engine) -> Callable[[tuple[int, ...]], np.ndarray] | None:
    """How to allocate ``engine``'s input arrays so that it copies them to the GPU directly.

    :func:`~temseg.engine.cuda_io.pinned_empty` (page-locked float32 memory)
    for the PyTorch CUDA and TensorRT engines, None (ordinary memory is as
    good) for the others.
    """
    if engine.backend in ("tensorrt", "torch") and engine.device.startswith("cuda"):
        from temseg.engine.cuda_io import pinned_empty

        return pinned_empty
    return None


def warmup(engine: Engine, shapes: Iterable[tuple[int, int, int, int]]) -> None:
    """Prepare ``engine`` for these (N, 1, H, W) batch shapes before the first frame.

    Uses the engine's own ``warmup`` (compilation, autotuning) when it has
    one, else runs each shape once.
    """
    own = getattr(engine, "warmup", None)
    if callable(own):
        own(list(shapes))
        return
    for shape in shapes:
        engine.predict(np.zeros(shape, dtype=np.float32))


__all__ = [
    "BACKENDS",
    "CPU_DEFAULT_BACKEND",
    "Engine",
    "EngineError",
    "check_backend",
    "choose_backend",
    "input_allocator",
    "load_engine",
    "tensorrt_importable",
    "warmup",
]
