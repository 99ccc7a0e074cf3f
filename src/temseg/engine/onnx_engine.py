"""ONNX Runtime backend: CPU execution provider, or CUDA with onnxruntime-gpu."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from temseg.engine.base import EngineError, as_batch, resolve_threads
from temseg.engine.cache import ensure_onnx
from temseg.model.bundle import ModelBundle
from temseg.model.onnx_export import INPUT_NAME
from temseg.options import Precision

if TYPE_CHECKING:
    import onnxruntime


def session_options(threads: int) -> onnxruntime.SessionOptions:
    """Session options for low-latency single-stream inference.

    All graph optimisations (incl. the NCHWc layout rewrite on x86),
    ``threads`` intra-op threads (0 = all cores), one inter-op thread, and
    no spin-waiting so that the I/O and publishing threads keep a core.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = resolve_threads(threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def select_providers(device: str, available: list[str]) -> list[str]:
    """Execution providers for ``device`` ("cpu", "cuda" or "cuda:N") among ``available``.

    CUDA needs the onnxruntime-gpu package; asking for it without that
    package raises :class:`EngineError`.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise EngineError(
            f"ONNX Runtime has no CUDA execution provider (available: {', '.join(available)}); "
            "install onnxruntime-gpu or use device 'cpu'"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OnnxRuntimeEngine:
    """Runs the bundle's probability graph with ONNX Runtime in fp32.

    ``device`` is "cpu", "cuda" or "cuda:N" (already resolved); ``threads``
    is the CPU intra-op thread count (0 = all cores). The ONNX file comes
    from :func:`temseg.engine.cache.ensure_onnx`.
    """

    backend = "onnxruntime"
    precision: Precision = "fp32"
    compiled = False

    def __init__(
        self,
        bundle: ModelBundle,
        threads: int = 0,
        *,
        device: str = "cpu",
        cache_dir: str | Path | None = None,
    ) -> None:
        import onnxruntime as ort

        providers = select_providers(device, ort.get_available_providers())
        provider_options: list[dict[str, str]] = [{} for _ in providers]
        if providers[0] == "CUDAExecutionProvider" and ":" in device:
            provider_options[0] = {"device_id": device.split(":", 1)[1]}
        self.onnx_path = ensure_onnx(bundle, fp16=False, cache_dir=cache_dir)
        try:
            self._session: Any = ort.InferenceSession(
                str(self.onnx_path),
                sess_options=session_options(threads),
                providers=providers,
                provider_options=provider_options,
            )
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise EngineError(f"ONNX Runtime cannot load {self.onnx_path}: {exc}") from exc
        on_cuda = providers[0] == "CUDAExecutionProvider"
        self.name = "onnxruntime-cuda" if on_cuda else "onnxruntime-cpu"
        self.device = device if on_cuda else "cpu"
        self.batches = on_cuda

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Particle probability, float32 (N, H, W), for a float32 (N, 1, H, W) batch."""
        x = as_batch(batch)
        (probability,) = self._session.run(None, {INPUT_NAME: x})
        return np.asarray(probability[:, 0], dtype=np.float32)

    def close(self) -> None:
        """Drop the session (its threads and memory go with it)."""
        self._session = None
