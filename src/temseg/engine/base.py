"""The one small interface every inference backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class EngineError(RuntimeError):
    """A backend is unavailable or failed to load/run a model."""


@runtime_checkable
class Engine(Protocol):
    """Runs a model bundle's probability graph.

    ``backend`` is "torch", "onnxruntime" or "tensorrt"; ``name`` describes
    the concrete set-up, e.g. "torch-cuda-fp16-compiled" or "onnxruntime-cpu".
    """

    backend: str
    name: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Particle probability for a normalised batch.

        ``batch`` is float32, shape (N, 1, H, W), H and W multiples of the
        model's ``size_multiple`` (pixels). Returns float32 (N, H, W) in [0, 1].
        """
        ...

    def close(self) -> None:
        """Release device memory, sessions and threads."""
        ...
