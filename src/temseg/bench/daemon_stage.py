"""(d) The daemon end to end: files arrive in a watched folder, masks come back over ZeroMQ.

The daemon runs in this process on an empty watched folder, a fresh SQLite
database and a free loopback port. Each frame arrives the way the project's
own writers deliver files: written as ``NAME.tif.part`` in the watched folder
(ignored: it matches no frame pattern), then renamed to ``NAME.tif``, so the
daemon sees every frame complete at once. Latency is the header's
``published_at`` minus the wall-clock time of that rename.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from temseg.bench.stats import (
    WORKERS,
    Clock,
    StageResult,
    cpu_split_ms,
    percentile_ms,
    reset_gpu_peak,
    thread_cpu_s,
    timed_stage,
)
from temseg.config import Settings
from temseg.daemon import Daemon
from temseg.frames import read_frame
from temseg.options import Backend, HostPriority
from temseg.stream import StreamMessage, Subscriber

WARMUP_TRIES = 3
SUBSCRIBE_SETTLE_S = 0.2


class BenchError(RuntimeError):
    """The daemon did not deliver what the benchmark waited for."""


def _stage(source: Path, folder: Path, name: str) -> tuple[Path, Path]:
    """Copy ``source`` to ``folder/NAME.part``; return (part file, final path)."""
    final = folder / name
    part = folder / (name + ".part")
    shutil.copyfile(source, part)
    return part, final


def _arrive(part: Path, final: Path) -> float:
    """Rename ``part`` into place; return the wall-clock time (POSIX s) right after."""
    os.rename(part, final)
    return time.time()


def _wait_for(
    subscriber: Subscriber, names: set[str], timeout_s: float
) -> dict[str, tuple[StreamMessage, float]]:
    """Messages about the files ``names``, with their wall-clock receive time.

    Raises :class:`BenchError` when nothing arrives for ``timeout_s`` seconds.
    """
    got: dict[str, tuple[StreamMessage, float]] = {}
    while len(got) < len(names):
        message = subscriber.receive(timeout_ms=int(timeout_s * 1000))
        if message is None:
            missing = len(names) - len(got)
            raise BenchError(f"no message for {timeout_s:g} s; {missing} of {len(names)} missing")
        name = Path(str(message.header.get("source", ""))).name
        if name in names:
            got[name] = (message, time.time())
    return got


def _header_s(header: dict[str, Any], key: str) -> float:
    """A header timestamp (ISO 8601) as POSIX seconds."""
    return datetime.fromisoformat(str(header[key])).timestamp()


def _detect_ms(
    got: dict[str, tuple[StreamMessage, float]], arrivals: dict[str, float]
) -> list[float]:
    """Arrival -> the daemon accepting the file (header ``received_at``), ms, per mask."""
    return [
        (_header_s(m.header, "received_at") - arrivals[name]) * 1e3
        for name, (m, _) in got.items()
        if "received_at" in m.header
    ]


def _handshake(
    subscriber: Subscriber, watch: Path, source: Path, daemon: Daemon, timeout_s: float
) -> int:
    """Send warm-up frames until one comes back (the subscription is live); return how many."""
    for attempt in range(WARMUP_TRIES):
        part, final = _stage(source, watch, f"warmup_{attempt:04d}.tif")
        _arrive(part, final)
        try:
            _wait_for(subscriber, {final.name}, timeout_s)
            return attempt + 1
        except BenchError:
            if daemon.stats.published == 0:  # the daemon itself delivered nothing
                break
    raise BenchError(f"the daemon published no warm-up frame within {timeout_s:g} s")


def bench_daemon(
    frames: list[Path],
    workdir: Path,
    *,
    model: Path,
    backend: Backend,
    device: str,
    threads: int,
    paced: int,
    batch_size: int | None = None,
    compile: bool = False,
    tile: int | None = None,
    host_priority: HostPriority | None = None,
    segmenter_processes: bool = False,
    timeout_s: float = 120.0,
    on_status: Callable[[str], object] | None = None,
) -> tuple[StageResult, StageResult | None]:
    """Burst and paced runs of the daemon; returns (burst, paced) stage results.

    Burst: all ``frames`` are renamed into the watched folder at once;
    throughput is frames over first arrival -> last mask received, latency
    per frame is ``published_at`` minus its arrival. Paced: ``paced`` more
    frames (copies of the first ones under new names), each arriving only
    once the previous mask was received: latency with an idle pipeline
    (None when ``paced`` is 0).
    ``workdir`` gets ``watch/`` and ``daemon.db``; ``model`` is pinned;
    ``batch_size``, ``tile`` (pixels), ``host_priority`` and ``segmenter_processes`` set the
    daemon's settings (the burst's CPU time then includes that of the worker processes);
    ``compile`` sets the daemon's ``compile`` with the frames' shape in
    ``warmup_shapes``.
    """
    say = on_status or (lambda _text: None)
    watch = workdir / "watch"
    watch.mkdir(parents=True)
    settings = Settings(
        watch=watch,
        db=f"sqlite:///{workdir / 'daemon.db'}",
        publish="tcp://127.0.0.1:0",
        model=str(model),
        backend=backend,
        device=device,
        threads=threads,
        log_level="WARNING",
    )
    if batch_size is not None:
        settings.batch_size = batch_size
    if tile is not None:
        settings.tile = tile
    if host_priority is not None:
        settings.host_priority = host_priority
    settings.segmenter_processes = segmenter_processes
    if compile:
        height, width = read_frame(frames[0]).image.shape
        settings.compile, settings.warmup_shapes = True, [f"{height}x{width}"]
    daemon = Daemon(settings)
    daemon.start()
    try:
        assert daemon.bound_url is not None
        with Subscriber(daemon.bound_url, topics=("temseg.",)) as subscriber:
            time.sleep(SUBSCRIBE_SETTLE_S)
            warmups = _handshake(subscriber, watch, frames[0], daemon, timeout_s)
            if not daemon.wait_idle(timeout_s):
                raise BenchError(f"the daemon was still busy after {timeout_s:g} s of warm-up")
            say(f"daemon ready on {daemon.bound_url}; burst of {len(frames)} frames")
            workers = daemon.segment_worker_pids()
            burst = _burst(subscriber, watch, frames, device, timeout_s, workers)
            if not daemon.wait_idle(timeout_s):
                raise BenchError(f"the daemon was still busy {timeout_s:g} s after the burst")
            paced_result = None
            if paced > 0:
                say(f"paced run of {paced} frames")
                paced_result = _paced(subscriber, watch, frames, paced, device, timeout_s)
            gaps = list(subscriber.gaps)
    finally:
        stats = daemon.stop()
    burst.details.update(
        warmup_frames=warmups,
        stream_gaps=gaps,
        daemon_stats={
            "done": stats.done,
            "failed": stats.failed,
            "skipped": stats.skipped,
            "published": stats.published,
            "batches": stats.batches,
            "largest_batch": stats.largest_batch,
        },
        engine=None if daemon.model is None else daemon.model.engine.name,
    )
    return burst, paced_result


def _timing_summary(messages: list[StreamMessage]) -> dict[str, float | None]:
    """Median of the daemon's own per-frame timings (header ``timing_ms``, ``latency_ms``)."""
    summary: dict[str, float | None] = {}
    for key in ("read", "infer", "segment", "total"):
        values = [float(m.header["timing_ms"][key]) for m in messages if "timing_ms" in m.header]
        summary[f"daemon_{key}_ms_p50"] = percentile_ms(values, 50)
    internal = [float(m.header["latency_ms"]) for m in messages if "latency_ms" in m.header]
    summary["daemon_latency_ms_p50"] = percentile_ms(internal, 50)
    return summary


def _burst(
    subscriber: Subscriber,
    watch: Path,
    frames: list[Path],
    device: str,
    timeout_s: float,
    workers: list[int],
) -> StageResult:
    staged = [_stage(path, watch, path.name) for path in frames]
    reset_gpu_peak(device)
    clock = Clock()
    threads_before = thread_cpu_s(workers)
    arrivals = {final.name: _arrive(part, final) for part, final in staged}
    got = _wait_for(subscriber, set(arrivals), timeout_s)
    cpu_by_thread = cpu_split_ms(threads_before, thread_cpu_s(workers), len(frames))
    first = min(arrivals.values())
    last = max(received for _, received in got.values())
    latency = [
        (_header_s(m.header, "published_at") - arrivals[n]) * 1e3 for n, (m, _) in got.items()
    ]
    received = [(r - arrivals[n]) * 1e3 for n, (_, r) in got.items()]
    messages = [m for m, _ in got.values()]
    details: dict[str, Any] = {
        "latency": "published_at - arrival (rename into the watched folder)",
        "errors": sum(m.is_error for m in messages),
        "received_ms_p50": percentile_ms(received, 50),
        "received_ms_p99": percentile_ms(received, 99),
        "detect_ms_p50": percentile_ms(_detect_ms(got, arrivals), 50),
        "latency_ms": [round(v, 3) for v in latency],
        "cpu_ms_per_frame_by_thread": cpu_by_thread,
        **_timing_summary(messages),
    }
    label = "daemon, burst (ZeroMQ end to end)"
    burst = timed_stage("daemon", label, clock, latency, device, details, seconds=last - first)
    if burst.cpu_ms_per_frame is not None:  # this process's, and its workers'
        burst.cpu_ms_per_frame += cpu_by_thread.get(WORKERS, 0.0)
    return burst


def _paced(
    subscriber: Subscriber,
    watch: Path,
    frames: list[Path],
    count: int,
    device: str,
    timeout_s: float,
) -> StageResult:
    latency: list[float] = []
    messages: list[StreamMessage] = []
    detect: list[float] = []
    seconds = 0.0  # arrival -> mask received, summed over frames
    clock = Clock()
    for i in range(count):
        part, final = _stage(frames[i % len(frames)], watch, f"paced_{i:04d}.tif")
        arrival = _arrive(part, final)
        got = _wait_for(subscriber, {final.name}, timeout_s)
        message, received = got[final.name]
        detect += _detect_ms(got, {final.name: arrival})
        seconds += received - arrival
        latency.append((_header_s(message.header, "published_at") - arrival) * 1e3)
        messages.append(message)
    details: dict[str, Any] = {
        "errors": sum(m.is_error for m in messages),
        "latency_ms": [round(v, 3) for v in latency],
        "detect_ms_p50": percentile_ms(detect, 50),
        **_timing_summary(messages),
    }
    label = "daemon, paced (one frame in flight)"
    return timed_stage("daemon_paced", label, clock, latency, device, details, seconds=seconds)
