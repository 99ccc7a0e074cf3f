"""Inference backends behind one small interface (:class:`Engine`)."""

from __future__ import annotations

from temseg.engine.base import Engine, EngineError
from temseg.model.bundle import ModelBundle

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def load_engine(
    bundle: ModelBundle, backend: str = "auto", device: str = "auto", threads: int = 0
) -> Engine:
    """Create an engine for ``bundle``. ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    from temseg.engine.torch_engine import TorchEngine

    return TorchEngine(bundle, threads=threads)


__all__ = ["BACKENDS", "Engine", "EngineError", "load_engine"]
