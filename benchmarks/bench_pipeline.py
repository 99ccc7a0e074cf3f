"""Pipeline throughput and latency at several frame sizes, as Markdown for RESULTS.md.

Runs ``temseg bench`` once per size and repeat, each in its own process (so
peak memory is per run), and prints the median of every figure over the
repeats, with the min-max range of the target ratios::

    python benchmarks/bench_pipeline.py --sizes 512 1024 --frames 30 12 --repeats 3

``--frames`` gives one count per size (or one for all). Each run's JSON
report is kept in ``--out`` when given. On a shared machine the spread
between repeats shows how much other load moved the figures.

``--metrics both`` runs every repeat twice, with the daemon's Prometheus
metrics on and off, alternating which goes first, and adds a table of the
daemon's figures per setting (the cost of the metrics)::

    python benchmarks/bench_pipeline.py --sizes 512 --frames 30 --repeats 4 --metrics both
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

STAGES = [
    ("engine", "(a) bare engine, 1 frame/call"),
    ("engine_batched", "(a) bare engine, batch_size frames/call"),
    ("decode", "(b) TIFF decode"),
    ("naive", "(c) naive loop (tifffile + torch eager fp32)"),
    ("daemon", "(d) daemon, burst: all frames at once"),
    ("daemon_paced", "(d) daemon, paced: one frame in flight"),
]
RATIOS = [
    ("daemon/naive", ">= 1.5"),
    ("daemon/engine", ">= 0.9"),
    ("paced_latency_p50/engine_p50", "<= 1.5"),
]


def run_once(
    size: int, frames: int, args: argparse.Namespace, out: Path, metrics: bool = True
) -> dict[str, Any]:
    """One ``temseg bench`` run in a child process; its JSON report."""
    command = [
        sys.executable,
        "-c",
        "from temseg.cli import app; app()",
        "bench",
        "--size",
        str(size),
        "--frames",
        str(frames),
        "--backend",
        args.backend,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--json",
        str(out),
    ]
    if args.model:
        command += ["--model", args.model]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if not metrics:
        command.append("--no-metrics")
    subprocess.run(command, check=True, stdout=sys.stderr)
    return json.loads(out.read_text())


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(reports: dict[int, list[dict[str, Any]]]) -> str:
    """Median figures per size (stages table), then the targets table."""
    first = next(iter(reports.values()))[0]
    lines = [
        f"Engine {first['backend']} on {first['device']}, {first['threads']} threads, "
        f"daemon batch size {first['batch_size']}; "
        f"model {first['model_id']} ({first['model_source']}); "
        f"torch {first['host']['torch']}, onnxruntime {first['host'].get('onnxruntime', '-')}. "
        "Medians over the repeats.",
        "",
        "| size px | frames | stage | frames/s | p50 ms | p99 ms | CPU ms/frame | peak RSS MiB |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for size, runs in reports.items():
        for name, label in STAGES:
            stages = [r["stages"][name] for r in runs if name in r["stages"]]
            if not stages:
                continue
            figures = {
                key: _median([s[key] for s in stages])
                for key in ("frames_per_s", "ms_p50", "ms_p99", "cpu_ms_per_frame", "peak_rss_mb")
            }
            lines.append(
                f"| {size} | {stages[0]['frames']} | {label} | {_fmt(figures['frames_per_s'], 2)} "
                f"| {_fmt(figures['ms_p50'])} | {_fmt(figures['ms_p99'])} "
                f"| {_fmt(figures['cpu_ms_per_frame'])} | {_fmt(figures['peak_rss_mb'], 0)} |"
            )
    lines += [
        "",
        "| size px | repeats | load (1 min) | "
        + " | ".join(f"{name} (target {goal})" for name, goal in RATIOS)
        + " |",
        "|---:|---:|---|" + "---|" * len(RATIOS),
    ]
    for size, runs in reports.items():
        loads = [s["load"] for r in runs for s in r["stages"].values() if s.get("load") is not None]
        cells = []
        for name, goal in RATIOS:
            values = [r["ratios"][name] for r in runs if r["ratios"].get(name) is not None]
            median = _median(values)
            limit = float(goal.split()[1])
            met = None if median is None else (median >= limit if ">" in goal else median <= limit)
            verdict = {True: "met", False: "missed", None: "-"}[met]
            spread = f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""
            cells.append(f"{_fmt(median, 2)}{spread} {verdict}")
        load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"
        lines.append(f"| {size} | {len(runs)} | {load} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="pixels")
    parser.add_argument("--frames", type=int, nargs="+", default=[30, 12], help="per size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    parser.add_argument("--batch-size", type=int, default=None, help="daemon batch size")
    parser.add_argument("--model", default=None, help="bundle directory (default: bundled)")
    parser.add_argument("--out", default=None, help="folder for each run's JSON report")
    parser.add_argument(
        "--metrics", choices=("on", "off", "both"), default="on", help="the daemon's metrics"
    )
    args = parser.parse_args()
    if len(args.frames) not in (1, len(args.sizes)):
        parser.error("give one --frames value, or one per size")
    counts = args.frames * len(args.sizes) if len(args.frames) == 1 else args.frames

    with tempfile.TemporaryDirectory(prefix="temseg-bench-pipeline-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        reports: dict[int, list[dict[str, Any]]] = {}
        by_setting: dict[tuple[int, bool], list[dict[str, Any]]] = {}
        for size, frames in zip(args.sizes, counts, strict=True):
            for repeat in range(args.repeats):
                settings = {"on": [True], "off": [False]}.get(args.metrics)
                if settings is None:  # both, alternating which runs first
                    settings = [True, False] if repeat % 2 == 0 else [False, True]
                for metrics in settings:
                    name = f"bench_{size}_{repeat}_{'metrics' if metrics else 'nometrics'}.json"
                    report = run_once(size, frames, args, out / name, metrics)
                    reports.setdefault(size, []).append(report)
                    by_setting.setdefault((size, metrics), []).append(report)
    print(markdown(reports))
    if args.metrics == "both":
        print()
        print(metrics_cost(by_setting))


def metrics_cost(by_setting: dict[tuple[int, bool], list[dict[str, Any]]]) -> str:
    """The daemon stage per metrics setting: median (min-max) over the runs."""
    lines = [
        "| size px | metrics | runs | daemon frames/s | p50 latency ms | CPU ms/frame |",
        "|---:|---|---:|---|---|---|",
    ]
    for (size, metrics), runs in sorted(
        by_setting.items(), key=lambda kv: (kv[0][0], not kv[0][1])
    ):
        cells = []
        for key, digits in (("frames_per_s", 2), ("ms_p50", 1), ("cpu_ms_per_frame", 1)):
            values = [r["stages"]["daemon"][key] for r in runs]
            present = [v for v in values if v is not None]
            spread = f" ({min(present):.{digits}f}-{max(present):.{digits}f})" if present else ""
            cells.append(f"{_fmt(_median(values), digits)}{spread}")
        lines.append(
            f"| {size} | {'on' if metrics else 'off'} | {len(runs)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
