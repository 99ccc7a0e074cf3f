"""Figures shared by every benchmark stage: percentiles, peak memory, one stage's result."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def percentile_ms(samples_ms: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation) of ``samples_ms``; None if empty."""
    if not samples_ms:
        return None
    return float(np.percentile(np.asarray(samples_ms, dtype=np.float64), q))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (``getrusage`` ``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def reset_gpu_peak(device: str) -> None:
    """Start a new peak of PyTorch's CUDA allocator on ``device`` (no-op on CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_mb(device: str) -> float | None:
    """Peak memory allocated by PyTorch on ``device`` since :func:`reset_gpu_peak`, MiB.

    None on CPU. Memory that ONNX Runtime or TensorRT allocate themselves is not counted.
    """
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / (1 << 20)


@dataclass
class StageResult:
    """One benchmark stage.

    ``frames_per_s`` is frames over the stage's timed wall time ``seconds``;
    ``ms_p50``/``ms_p99`` are per-frame times in ms (for the daemon: latency
    from the file's arrival to the mask being published). ``peak_rss_mb`` is
    the process's peak resident memory once the stage ended (stages run one
    after another in one process, so it never decreases); ``peak_gpu_mb`` is
    PyTorch's CUDA peak during the stage (None on CPU).
    """

    name: str
    label: str
    frames: int
    seconds: float
    frames_per_s: float
    ms_p50: float | None
    ms_p99: float | None
    peak_rss_mb: float
    peak_gpu_mb: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def timed_stage(
    name: str,
    label: str,
    seconds: float,
    per_frame_ms: list[float],
    device: str,
    details: dict[str, Any] | None = None,
) -> StageResult:
    """A :class:`StageResult` from the timed wall time and the per-frame times (ms)."""
    frames = len(per_frame_ms)
    return StageResult(
        name=name,
        label=label,
        frames=frames,
        seconds=seconds,
        frames_per_s=frames / seconds if seconds > 0 else float("nan"),
        ms_p50=percentile_ms(per_frame_ms, 50),
        ms_p99=percentile_ms(per_frame_ms, 99),
        peak_rss_mb=peak_rss_mb(),
        peak_gpu_mb=gpu_peak_mb(device),
        details=details or {},
    )
