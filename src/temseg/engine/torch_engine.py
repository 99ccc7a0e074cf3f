"""PyTorch backend: CPU fp32 (minimal version; CUDA fast path to come)."""

from __future__ import annotations

import numpy as np
import torch

from temseg.model.bundle import ModelBundle
from temseg.model.unet import ProbabilityModel


class TorchEngine:
    """Runs the bundle's probability graph with PyTorch on the CPU in fp32."""

    backend = "torch"

    def __init__(self, bundle: ModelBundle, threads: int = 0) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self._model = ProbabilityModel(bundle.model).eval()
        self.name = "torch-cpu-fp32"

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return self._model(x)[:, 0].numpy()

    def close(self) -> None:
        self._model = None  # type: ignore[assignment]
