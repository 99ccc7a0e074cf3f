"""Figures shared by every benchmark stage: percentiles, peak memory, one stage's result."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def percentile_ms(samples_ms: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation) of ``samples_ms``; None if empty."""
    if not samples_ms:
        return None
    return float(np.percentile(np.asarray(samples_ms, dtype=np.float64), q))


def median_ms(step: Callable[[], object], repeats: int) -> float:
    """Median wall-clock time of ``repeats`` calls of ``step``, ms, after one untimed call
    (first-use imports and caches)."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


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
class Clock:
    """Wall time, this process's CPU time (all threads) and the 1-min load average at a start."""

    wall: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=time.process_time)
    load: float = field(default_factory=lambda: os.getloadavg()[0])

    def wall_s(self) -> float:
        """Wall seconds since the start."""
        return time.perf_counter() - self.wall

    def cpu_s(self) -> float:
        """CPU seconds this process used since the start."""
        return time.process_time() - self.cpu


@dataclass
class StageResult:
    """One benchmark stage.

    ``frames_per_s`` is frames over the stage's timed wall time ``seconds``;
    ``ms_p50``/``ms_p99`` are per-frame times in ms (for the daemon: latency
    from the file's arrival to the mask being published). ``peak_rss_mb`` is
    the process's peak resident memory once the stage ended (stages run one
    after another in one process, so it never decreases); ``peak_gpu_mb`` is
    PyTorch's CUDA peak during the stage (None on CPU). ``cpu_ms_per_frame``
    is this process's CPU time (all threads) per frame: unlike wall time it
    hardly grows when other programs share the cores. ``load`` is the 1-min
    load average when the stage started.
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
    cpu_ms_per_frame: float | None = None
    load: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def timed_stage(
    name: str,
    label: str,
    clock: Clock,
    per_frame_ms: list[float],
    device: str,
    details: dict[str, Any] | None = None,
    *,
    seconds: float | None = None,
) -> StageResult:
    """A :class:`StageResult` from a stage's clock and per-frame times (ms).

    ``seconds`` (default: wall time on ``clock``) is the time the frames took.
    """
    frames = len(per_frame_ms)
    wall = clock.wall_s() if seconds is None else seconds
    return StageResult(
        name=name,
        label=label,
        frames=frames,
        seconds=wall,
        frames_per_s=frames / wall if wall > 0 else float("nan"),
        ms_p50=percentile_ms(per_frame_ms, 50),
        ms_p99=percentile_ms(per_frame_ms, 99),
        peak_rss_mb=peak_rss_mb(),
        peak_gpu_mb=gpu_peak_mb(device),
        cpu_ms_per_frame=clock.cpu_s() * 1e3 / frames if frames else None,
        load=clock.load,
        details=details or {},
    )


#: The group :func:`thread_cpu_s` sums the daemon's segmentation worker processes under.
WORKERS = "segment-workers"


def thread_cpu_s(workers: Sequence[int] = ()) -> dict[str, float]:
    """CPU seconds used so far by each thread of this process, keyed by thread name.

    Python threads appear under their ``threading`` names (numbered ones such
    as ``temseg-reader_0`` summed under ``temseg-reader``); threads started
    by native libraries (e.g. ONNX Runtime's pool) are summed under
    ``"native"``; the processes ``workers`` (pids) under :data:`WORKERS`.
    Empty where ``/proc`` is unavailable.
    """
    import re
    import threading

    task_dir = f"/proc/{os.getpid()}/task"
    if not os.path.isdir(task_dir):
        return {}
    names = {t.native_id: re.sub(r"_\d+$", "", t.name) for t in threading.enumerate()}
    usage: dict[str, float] = {}
    for tid in os.listdir(task_dir):
        name = names.get(int(tid), "native")
        usage[name] = usage.get(name, 0.0) + _cpu_s(f"{task_dir}/{tid}/stat")
    if workers:
        usage[WORKERS] = sum(_cpu_s(f"/proc/{pid}/stat") for pid in workers)
    return usage


def _cpu_s(stat_path: str) -> float:
    """User + system CPU seconds in a ``/proc`` stat file; 0 once the thread or process ended."""
    try:
        with open(stat_path) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_split_ms(
    before: dict[str, float], after: dict[str, float], frames: int
) -> dict[str, float]:
    """CPU ms per frame of each thread group between two :func:`thread_cpu_s` readings."""
    if frames < 1:
        return {}
    split = {k: (v - before.get(k, 0.0)) * 1e3 / frames for k, v in after.items()}
    return {k: round(v, 2) for k, v in sorted(split.items(), key=lambda kv: -kv[1]) if v > 0}
