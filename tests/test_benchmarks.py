"""The benchmark scripts run end to end on tiny frames (their figures are not checked here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize(("engine_ms", "where"), [("0", "threads"), ("2", "processes")])
def test_bench_ceiling_runs_the_daemon_with_a_stand_in_engine(engine_ms: str, where: str) -> None:
    options = ["--segmenter-processes"] if where == "processes" else []
    out = run_script(
        "bench_ceiling.py",
        "--size",
        "64",
        "--frames",
        "4",
        "--paced",
        "2",
        "--engine-ms",
        engine_ms,
        *options,
    )
    assert f"particles measured in {'worker processes' if options else 'segmenter threads'}" in out
    burst = re.search(r"burst: ([\d.]+) frames/s", out)
    assert burst is not None and float(burst.group(1)) > 0
    infer = re.search(r"infer ([\d.]+)", out)
    assert infer is not None and float(infer.group(1)) >= float(engine_ms)  # the stand-in's sleep
    assert "CPU ms per frame by thread" in out
    calls = re.search(r"engine calls: (\d+) with raw frames \(masks back\), (\d+) with float", out)
    assert calls is not None and int(calls.group(1)) >= 4 + 2  # every frame: masks from the device


def test_bench_ceiling_host_path_gives_the_engine_float_inputs_only() -> None:
    out = run_script(
        "bench_ceiling.py", "--size", "64", "--frames", "3", "--paced", "1", "--engine-ms", "0",
        "--host-path",
    )  # fmt: skip
    assert "float maps thresholded on the host" in out
    calls = re.search(r"engine calls: (\d+) with raw frames \(masks back\), (\d+) with float", out)
    assert calls is not None and int(calls.group(1)) == 0 and int(calls.group(2)) >= 3 + 1


def test_bench_host_measures_every_step() -> None:
    out = run_script("bench_host.py", "--size", "128", "--repeats", "1", "--threads", "1")
    steps = ("SHA-256", "TIFF decode", "threshold + particles", "database record", "PackBits mask")
    for step in (*steps, "decode a raw mask message", "decode a PackBits mask message"):
        assert re.search(rf"{re.escape(step)}.*\d+\.\d ms", out), step
    assert "reader step, 1 thread(s)" in out
    assert re.search(r"particles in a worker .*\d+\.\d ms", out)
    assert "segmenter, particles in workers step, 1 thread(s)" in out


def test_bench_formats_reads_back_every_format() -> None:
    out = run_script("bench_formats.py", "--sizes", "32", "--repeats", "1", "--imports", "1")
    for name in ("tiff", "mrc", "velox emd", "berkeley emd", "dm3", "dm4", "ser"):
        assert re.search(rf"^\| 32 \| {name} \|", out, re.MULTILINE), out
    assert "| h5py (`import h5py` after `numpy`) |" in out


def test_bench_events_counts_every_frame() -> None:
    out = run_script("bench_events.py", "--frames", "50", "--queued", "1")
    assert re.search(r"[\d.]+ us per frame in emit \(50 frames counted\)", out), out


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="needs Linux's SCHED_IDLE")
def test_bench_sched_idle_times_a_burst_at_each_priority() -> None:
    out = run_script(
        "bench_sched_idle.py",
        *("--busy", "0", "--seconds", "0.1", "--frames", "2", "--size", "32", "--repeats", "1"),
    )
    for priority in ("normal", "idle"):
        assert f"host_priority={priority}: 2 recorded in" in out, out
    assert re.search(r"idle: \d\.\d+ of a core", out), out


def test_bench_labelling_times_temsegs_labelling() -> None:
    out = run_script("bench_labelling.py", "--size", "256", "--repeats", "1")
    assert re.search(r"temseg measure_particles \(chooses: run by run\)\s+\d+\.\d ms", out)
    assert re.search(r"temseg measure_particles, scipy.ndimage.label\s+\d+\.\d ms", out)
    noisy = run_script("bench_labelling.py", "--size", "256", "--repeats", "1", "--noise", "0.5")
    assert re.search(r"temseg measure_particles \(chooses: scipy\)\s+\d+\.\d ms", noisy)
