"""The one small interface every inference backend implements."""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

from temseg.options import Precision


class EngineError(RuntimeError):
    """A backend is unavailable or failed to load/run a model."""


@runtime_checkable
class Engine(Protocol):
    """Runs a model bundle's probability graph.

    ``backend`` is "torch", "onnxruntime" or "tensorrt"; ``name`` describes
    the concrete set-up for people, e.g. "torch-cuda-fp16-compiled" or
    "onnxruntime-cpu" (logs, stream headers). Code decides on the capabilities
    below, never on the name.
    """

    backend: str
    name: str
    #: Where it computes, as a torch device string: "cpu", "cuda", "cuda:1".
    device: str
    precision: Precision
    #: Compiled for each input shape it sees (``torch.compile``): a new batch size or
    #: frame shape costs a compilation.
    compiled: bool
    #: Several frames in one call cost less per frame than one at a time (a GPU engine
    #: that is not compiled); on a CPU a batch costs more per frame and far more memory.
    batches: bool

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Particle probability for a normalised batch.

        ``batch`` is float32, shape (N, 1, H, W), H and W multiples of the
        model's ``size_multiple`` (pixels). Returns float32 (N, H, W) in [0, 1].
        """
        ...

    def close(self) -> None:
        """Release device memory, sessions and threads."""
        ...


def resolve_device(device: str) -> str:
    """Map a device setting ("auto", "cpu", "cuda", "cuda:N") to a concrete torch device string.

    "auto" is "cuda" when PyTorch sees a CUDA device, else "cpu". Asking for
    CUDA on a machine without one raises :class:`EngineError`.
    """
    import torch

    name = device.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EngineError(f"device {device!r} requested but PyTorch sees no CUDA device")
        return name
    raise EngineError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")


def resolve_threads(threads: int) -> int:
    """CPU inference threads: ``threads`` if positive, else all cores of this machine."""
    if threads < 0:
        raise EngineError(f"threads must be >= 0 (0 = all cores), got {threads}")
    return threads if threads > 0 else (os.cpu_count() or 1)


def as_batch(batch: np.ndarray) -> np.ndarray:
    """``batch`` as a C-contiguous float32 (N, 1, H, W) array, else :class:`EngineError`."""
    x = np.ascontiguousarray(batch, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 1 or 0 in x.shape:
        raise EngineError(f"expected a non-empty (N, 1, H, W) batch, got shape {x.shape}")
    return x
