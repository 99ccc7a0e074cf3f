"""PyTorch backend: CPU fp32, or CUDA fp16 with optional ``torch.compile``.

On both devices batch norms are folded into the convolutions and the network
runs channels_last (on CPU that alone halved the time per 512 px frame).

On CUDA each batch is copied from page-locked host memory to the device
asynchronously on the engine's own (non-default) stream (a batch already in
page-locked memory, see :func:`temseg.engine.cuda_io.pinned_empty`, is not
copied on the host first); the network runs on that stream and the
probability comes back in a new page-locked array, which is returned as is.
``torch.compile`` uses static shapes (``dynamic=False``): each distinct input
shape (frames are already padded to a multiple of the model's
``size_multiple``) is compiled once, ideally in :meth:`TorchEngine.warmup`
before the first frame arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from temseg.engine.base import EngineError, as_batch, resolve_device, resolve_threads
from temseg.engine.cuda_io import pinned_source
from temseg.model.bundle import ModelBundle
from temseg.model.unet import ProbabilityModel, fold_batch_norm
from temseg.options import Precision

COMPILE_MODES = ("max-autotune-no-cudagraphs", "reduce-overhead")
PRECISIONS = ("fp32", "fp16")
_MIN_RECOMPILE_LIMIT = 64  # distinct padded shapes one compiled engine may see


def engine_name(device_type: str, precision: str, compiled: bool) -> str:
    """E.g. "torch-cpu-fp32" or "torch-cuda-fp16-compiled"."""
    return f"torch-{device_type}-{precision}" + ("-compiled" if compiled else "")


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for attr in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, attr):
            setattr(config, attr, max(int(getattr(config, attr)), _MIN_RECOMPILE_LIMIT))
            return


class TorchEngine:
    """Runs the bundle's probability graph with PyTorch.

    ``threads``: CPU threads (0 = all cores; sets PyTorch's process-wide
    count). ``device``: "cpu", "cuda", "cuda:N" or "auto". ``precision``:
    "fp32" or "fp16" (default fp16 on CUDA, fp32 on CPU; fp16 needs CUDA).
    ``compile``: wrap the network in ``torch.compile`` with ``compile_mode``
    (one of :data:`COMPILE_MODES`; CUDA only). The bundle's network is copied,
    never modified.
    """

    backend = "torch"

    def __init__(
        self,
        bundle: ModelBundle,
        threads: int = 0,
        *,
        device: str = "cpu",
        precision: str | None = None,
        compile: bool = False,
        compile_mode: str = COMPILE_MODES[0],
    ) -> None:
        self._device = torch.device(resolve_device(device))
        on_cuda = self._device.type == "cuda"
        precision = precision or ("fp16" if on_cuda else "fp32")
        if precision not in PRECISIONS:
            raise EngineError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
        if precision == "fp16" and not on_cuda:
            raise EngineError("fp16 inference with PyTorch needs a CUDA device; use fp32 on CPU")
        if compile and not on_cuda:
            raise EngineError("torch.compile is used on CUDA only; run the CPU engine eager")
        if compile_mode not in COMPILE_MODES:
            raise EngineError(
                f"unknown compile mode {compile_mode!r}; choose from {', '.join(COMPILE_MODES)}"
            )
        self.precision: Precision = "fp16" if precision == "fp16" else "fp32"
        self.compile_mode = compile_mode if compile else None
        self.device = str(self._device)
        self.compiled = compile
        self.batches = on_cuda and not compile
        self.name = engine_name(self._device.type, precision, compile)
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        model = ProbabilityModel(fold_batch_norm(bundle.model)).eval()
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._stream: torch.cuda.Stream | None = None
        if not on_cuda:
            torch.set_num_threads(resolve_threads(threads))
            self._model: torch.nn.Module | None = model
            self._forward: Callable[[torch.Tensor], torch.Tensor] = model
            return
        model = model.to(device=self._device, dtype=self._dtype)
        torch.cuda.synchronize(self._device)  # weights ready before other streams read them
        self._model = model
        self._forward = model
        if compile:
            _raise_recompile_limit()
            self._forward = torch.compile(model, mode=compile_mode, dynamic=False, fullgraph=True)
        self._stream = torch.cuda.Stream(device=self._device)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Particle probability, float32 (N, H, W), for a float32 (N, 1, H, W) batch."""
        if self._model is None:
            raise EngineError(f"{self.name}: engine is closed")
        x = as_batch(batch)
        if self._device.type == "cpu":
            with torch.inference_mode():
                image = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
                return self._forward(image)[:, 0].contiguous().numpy()
        return self._predict_cuda(x)

    def _predict_cuda(self, x: np.ndarray) -> np.ndarray:
        assert self._stream is not None
        host_in = pinned_source(x)
        n, _, h, w = x.shape
        host_out = torch.empty((n, h, w), dtype=torch.float32, pin_memory=True)
        with torch.cuda.stream(self._stream), torch.inference_mode():
            device_in = host_in.to(self._device, non_blocking=True)
            device_in = device_in.to(dtype=self._dtype, memory_format=torch.channels_last)
            if self.compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            probability = self._forward(device_in)[:, 0].float()
            host_out.copy_(probability, non_blocking=True)
        self._stream.synchronize()
        return host_out.numpy()

    def warmup(self, shapes: Iterable[tuple[int, int, int, int]]) -> None:
        """Run each (N, 1, H, W) shape a few times so compilation and autotuning happen now."""
        repeats = 3 if self.compile_mode is not None else 1
        for shape in shapes:
            zeros = np.zeros(shape, dtype=np.float32)
            for _ in range(repeats):
                self.predict(zeros)

    def close(self) -> None:
        """Release the network and cached CUDA memory."""
        self._model = None
        self._forward = None  # type: ignore[assignment]
        if self._stream is not None:
            self._stream = None
            torch.cuda.empty_cache()
