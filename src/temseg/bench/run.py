"""One benchmark run over all stages, its targets, and the printed table."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from temseg.bench.daemon_stage import bench_daemon
from temseg.bench.stages import (
    bench_decode,
    bench_engine,
    bench_engine_batched,
    bench_naive,
    model_input,
    write_frames,
)
from temseg.bench.stats import StageResult
from temseg.config import Settings
from temseg.daemon.models import frames_per_call
from temseg.engine import check_backend, load_engine
from temseg.engine.base import resolve_device, resolve_threads
from temseg.inference import default_tile
from temseg.model.bundle import BundleError, ModelBundle, load_bundle, save_bundle
from temseg.options import Backend
from temseg.synth import DEFAULT_PIXEL_NM

STAGE_TAGS = {
    "engine": "(a)",
    "engine_batched": "",
    "decode": "(b)",
    "naive": "(c)",
    "daemon": "(d)",
    "daemon_paced": "",
}
DEFAULT_PACED = 10


@dataclass
class Target:
    """A performance target: ``value`` must be at least (or at most) ``limit``."""

    name: str
    value: float | None
    limit: float
    at_least: bool

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.at_least else self.value <= self.limit


@dataclass
class BenchReport:
    """All figures of one ``temseg bench`` run (times in ms, memory in MiB, sizes in pixels)."""

    size: int
    frames: int
    device: str
    threads: int
    backend: str
    batch_size: int  # the daemon's setting: a cap, used on GPU engines only
    model_id: str
    model_source: str
    started_at: str
    host: dict[str, Any]
    stages: dict[str, StageResult] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    frames_per_call: int = 1  # frames per engine call in the daemon with this engine
    segmenter_processes: bool = False  # the daemon measured particles in worker processes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy, each target with its ``met`` flag."""
        data = dataclasses.asdict(self)
        data["targets"] = [dict(dataclasses.asdict(t), met=t.met) for t in self.targets]
        return data


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _bench_model(model: str | None, workdir: Path) -> tuple[ModelBundle, str]:
    """The bundle to benchmark and where it came from.

    ``model`` None takes the bundled model; when the package ships none,
    a randomly initialised network of the default architecture is written
    to ``workdir`` (speed does not depend on the weights).
    """
    if model is not None:
        return load_bundle(model), str(model)
    try:
        return load_bundle(None), "bundled"
    except BundleError:
        import torch

        from temseg.model.unet import build_unet

        torch.manual_seed(0)
        meta = {"pixel_nm": DEFAULT_PIXEL_NM, "materials": ["Au", "CdSe"], "name": "bench-random"}
        path = save_bundle(build_unet("groschner2021"), meta, workdir / "model")
        return load_bundle(path), "random weights: no bundled model"


def evaluate(report: BenchReport) -> None:
    """Fill ``report.ratios`` and ``report.targets`` from its stages."""
    s = report.stages
    fps = {name: stage.frames_per_s for name, stage in s.items()}
    daemon = fps.get("daemon")
    paced = s["daemon_paced"].ms_p50 if "daemon_paced" in s else None
    single = s["engine"].ms_p50 if "engine" in s else None
    burst = s["daemon"].ms_p50 if "daemon" in s else None
    report.ratios = {
        "daemon/engine": _ratio(daemon, fps.get("engine")),
        "daemon/engine_batched": _ratio(daemon, fps.get("engine_batched")),
        "daemon/naive": _ratio(daemon, fps.get("naive")),
        "paced_latency_p50/engine_p50": _ratio(paced, single),
        "burst_latency_p50/engine_p50": _ratio(burst, single),
    }
    report.targets = [
        Target("daemon frames/s >= 1.5 x naive", report.ratios["daemon/naive"], 1.5, True),
        Target("daemon frames/s >= 0.9 x bare engine", report.ratios["daemon/engine"], 0.9, True),
        Target(
            "daemon p50 latency (paced) <= 1.5 x single-frame inference",
            report.ratios["paced_latency_p50/engine_p50"],
            1.5,
            False,
        ),
    ]


def run_bench(
    size: int = 512,
    frames: int = 20,
    *,
    backend: str = "auto",
    device: str = "auto",
    threads: int = 0,
    model: str | None = None,
    paced: int | None = None,
    batch_size: int | None = None,
    compile: bool = False,
    segmenter_processes: bool = False,
    seed: int = 0,
    workdir: str | Path | None = None,
    on_status: Callable[[str], object] | None = None,
) -> BenchReport:
    """Benchmark the pipeline on ``frames`` synthetic ``size`` x ``size`` px frames.

    Stages, in one process and this order: (b) TIFF decode, (c) the naive
    notebook loop, (a) the bare engine (in batches of ``batch_size`` unless
    frames are tiled or the engine is compiled, then one frame per call),
    (d) the daemon through ZeroMQ, as a burst of all frames
    then ``paced`` frames one at a time (default: ``min(frames, 10)``). ``batch_size``:
    the daemon's (and the batched engine stage's) batch size, default the
    daemon's setting. ``compile``: ``torch.compile`` the engine (CUDA), in
    stage (a) and in the daemon, compiled before timing. ``segmenter_processes``:
    the daemon's setting of that name. ``threads``: CPU
    threads (0 = all cores). ``workdir`` (new or empty) keeps the frames,
    database and watched folder (default: a temporary folder, removed afterwards).
    """
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    with contextlib.ExitStack() as cleanup:
        if workdir is None:
            workdir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="temseg-bench-"))
        say = on_status or (lambda _text: None)
        work = Path(workdir)
        if work.is_dir() and any(work.iterdir()):
            raise ValueError(f"work folder {work} is not empty")
        work.mkdir(parents=True, exist_ok=True)
        defaults = Settings()
        batch = defaults.batch_size if batch_size is None else batch_size
        if batch < 1:
            raise ValueError(f"batch size must be at least 1, got {batch}")
        resolved = resolve_device(device)
        check_backend(backend, resolved)  # before minutes of frames and baseline
        tile = defaults.tile or default_tile(resolved)  # as the daemon resolves it
        cpu_threads = resolve_threads(threads)
        bundle, source = _bench_model(model, work)
        multiple = bundle.config.size_multiple
        if size < multiple or size % multiple:
            raise ValueError(
                f"size must be a multiple of the model's {multiple} px "
                "(the naive loop does not pad)"
            )
        report = BenchReport(
            size=size,
            frames=frames,
            device=resolved,
            threads=cpu_threads,
            backend=backend,
            batch_size=batch,
            model_id=bundle.model_id,
            model_source=source,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            host=_host(resolved),
            segmenter_processes=segmenter_processes,
        )
        say(f"writing {frames} synthetic frames of {size} x {size} px")
        paths = write_frames(work / "frames", frames, size, seed=seed)

        say("(b) TIFF decode")
        report.stages["decode"], decoded = bench_decode(paths, resolved)
        inputs = [model_input(f, bundle) for f in decoded]
        del decoded

        say("(c) naive loop")
        report.stages["naive"] = bench_naive(paths, bundle, resolved, threads)

        # The bare engine runs last before the daemon, one frame per call last of
        # all: on a shared machine the speed drifts, and the ratios compare these two.
        say("(a) bare engine")
        engine = load_engine(
            bundle, backend=backend, device=resolved, threads=threads, compile=compile
        )
        try:
            report.backend = engine.name
            report.frames_per_call = frames_per_call(engine, batch)
            tiled = max(inputs[0].shape) > tile
            # A compiled engine would compile the batch shape anew.
            if batch > 1 and not tiled and not engine.compiled:
                report.stages["engine_batched"] = bench_engine_batched(
                    inputs, engine, bundle, resolved, batch
                )
            report.stages["engine"] = bench_engine(
                inputs, engine, bundle, resolved, tile=tile, overlap=defaults.tile_overlap
            )
        finally:
            engine.close()
        del inputs

        say("(d) daemon")
        assert bundle.path is not None
        burst, paced_result = bench_daemon(
            paths,
            work / "daemon",
            model=bundle.path,
            backend=cast(Backend, backend),  # checked by check_backend above
            device=resolved,
            threads=threads,
            paced=min(frames, DEFAULT_PACED) if paced is None else paced,
            batch_size=batch,
            compile=compile,
            segmenter_processes=segmenter_processes,
            on_status=say,
        )
        report.stages["daemon"] = burst
        if paced_result is not None:
            report.stages["daemon_paced"] = paced_result
        evaluate(report)
        return report


def _host(device: str) -> dict[str, Any]:
    import numpy as np
    import torch

    host: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    try:
        import onnxruntime

        host["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if device.startswith("cuda"):
        host["gpu"] = torch.cuda.get_device_name(device)
    return host


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(report: BenchReport) -> str:
    """The report as a readable plain-text table."""
    gpu = report.device.startswith("cuda")
    threads = f", threads {report.threads}" if not gpu else ""
    lines = [
        f"temseg bench {report.started_at}: {report.frames} frames of {report.size} x "
        f"{report.size} px, device {report.device}{threads}, engine {report.backend}, "
        f"daemon batch {report.batch_size} ({report.frames_per_call} frame(s) per engine call"
        f"{', particles measured in worker processes' if report.segmenter_processes else ''}), "
        f"model {report.model_id} ({report.model_source})",
        "",
        f"{'stage':48s} {'frames/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} {'CPU ms/fr':>10s} "
        f"{'load':>5s} {'peak RSS MiB':>13s}" + (f" {'GPU MiB':>8s}" if gpu else ""),
    ]
    order = [name for name in STAGE_TAGS if name in report.stages]
    for name in order:
        stage = report.stages[name]
        label = f"{STAGE_TAGS.get(name, '')} {stage.label}".strip()
        if not STAGE_TAGS.get(name):
            label = "    " + label
        if name.startswith("daemon"):
            label += " [latency]"
        row = (
            f"{label:48s} {_num(stage.frames_per_s, 2):>9s} {_num(stage.ms_p50):>9s} "
            f"{_num(stage.ms_p99):>9s} {_num(stage.cpu_ms_per_frame):>10s} "
            f"{_num(stage.load, 2):>5s} {_num(stage.peak_rss_mb, 0):>13s}"
        )
        if gpu:
            row += f" {_num(stage.peak_gpu_mb, 0):>8s}"
        lines.append(row)
    lines.append(
        "daemon p50/p99: latency, file renamed into the watched folder -> mask published; "
        "CPU ms/fr: this process's CPU time (all threads) per frame; load: 1-min load average"
    )
    paced = report.stages.get("daemon_paced")
    if paced is not None:
        steps = ", ".join(
            f"{step} {_num(paced.details.get(f'daemon_{step}_ms_p50'))}"
            for step in ("read", "infer", "segment")
        )
        lines.append(f"daemon paced, p50 ms per frame: {steps}; the rest is queues and recording")
    lines.append("")
    lines.append(
        "ratios: "
        + ", ".join(f"{k} {_num(v, 2)}" for k, v in report.ratios.items() if v is not None)
    )
    lines.append("targets:")
    for target in report.targets:
        mark = {True: "met   ", False: "MISSED", None: "n/a   "}[target.met]
        sign = ">=" if target.at_least else "<="
        lines.append(f"  [{mark}] {target.name}: {_num(target.value, 2)} ({sign} {target.limit:g})")
    return "\n".join(lines)
