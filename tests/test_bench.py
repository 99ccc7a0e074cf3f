"""temseg bench on tiny frames: every stage runs on real components and counts add up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from temseg.bench import BenchReport, StageResult, evaluate, format_report
from temseg.cli import app
from temseg.engine import tensorrt_importable
from temseg.store import connect, recorded_paths

STAGES = {"engine", "engine_batched", "decode", "naive", "daemon", "daemon_paced"}
FRAMES = 3


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, Path]:
    """One ``temseg bench --frames 3 --size 64`` run: (stdout, JSON report, work folder)."""
    root = tmp_path_factory.mktemp("bench")
    out, work = root / "report.json", root / "work"
    args = ["bench", "--frames", str(FRAMES), "--size", "64", "--threads", "1"]
    args += ["--json", str(out), "--workdir", str(work)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout, json.loads(out.read_text()), work


def test_report_has_every_stage_with_its_frame_count(bench_run: tuple[str, dict, Path]) -> None:
    _, report, _ = bench_run
    assert report["size"] == 64 and report["frames"] == FRAMES
    assert set(report["stages"]) == STAGES
    for name, stage in report["stages"].items():
        assert stage["name"] == name
        assert stage["frames"] == FRAMES
        assert stage["seconds"] > 0 and stage["frames_per_s"] > 0
        assert stage["ms_p50"] <= stage["ms_p99"]
        assert stage["peak_rss_mb"] > 0 and stage["cpu_ms_per_frame"] > 0
        assert stage["peak_gpu_mb"] is None  # CPU run
    assert report["device"] == "cpu" and report["threads"] == 1 and report["batch_size"] == 4
    assert report["frames_per_call"] == 1  # the daemon batches on GPU engines only
    assert report["stages"]["daemon"]["details"]["daemon_stats"]["largest_batch"] == 1
    assert report["stages"]["engine"]["details"]["engine"] == report["backend"]


def test_daemon_processed_every_frame_once(bench_run: tuple[str, dict, Path]) -> None:
    _, report, work = bench_run
    burst, paced = report["stages"]["daemon"], report["stages"]["daemon_paced"]
    stats = burst["details"]["daemon_stats"]
    warmups = burst["details"]["warmup_frames"]
    assert warmups >= 1
    assert stats["done"] == stats["published"] == FRAMES + FRAMES + warmups
    assert stats["failed"] == stats["skipped"] == 0
    assert burst["details"]["errors"] == paced["details"]["errors"] == 0
    assert burst["details"]["stream_gaps"] == []
    # masks are published after the files arrived
    assert len(burst["details"]["latency_ms"]) == FRAMES
    assert all(ms > 0 for ms in burst["details"]["latency_ms"] + paced["details"]["latency_ms"])
    steps = [paced["details"][f"daemon_{step}_ms_p50"] for step in ("read", "infer", "segment")]
    assert min(steps) > 0

    watched = sorted(p.name for p in (work / "daemon" / "watch").iterdir())
    frames = sorted(p.name for p in (work / "frames").glob("*.tif"))
    assert len(frames) == FRAMES
    assert not [n for n in watched if n.endswith(".part")]
    assert len(watched) == FRAMES + FRAMES + warmups
    assert set(frames) <= set(watched)
    db = connect(work / "daemon" / "daemon.db", create=False)
    try:
        recorded = {Path(path).name for path, _ in recorded_paths(db)}
    finally:
        db.dispose()
    assert recorded == set(watched)


def test_report_lists_ratios_and_targets(bench_run: tuple[str, dict, Path]) -> None:
    stdout, report, _ = bench_run
    ratios = report["ratios"]
    daemon = report["stages"]["daemon"]["frames_per_s"]
    naive = report["stages"]["naive"]["frames_per_s"]
    assert ratios["daemon/naive"] == pytest.approx(daemon / naive)
    assert len(report["targets"]) == 3
    assert all(isinstance(t["met"], bool) for t in report["targets"])
    for tag in ("(a)", "(b)", "(c)", "(d)", "daemon/naive", "targets:", "paced, p50 ms"):
        assert tag in stdout


def _stage(name: str, fps: float, p50: float) -> StageResult:
    return StageResult(name, name, 10, 10 / fps, fps, p50, p50, 100.0)


def test_targets_compare_the_right_figures() -> None:
    report = BenchReport(
        size=64,
        frames=10,
        device="cpu",
        threads=2,
        backend="onnxruntime-cpu",
        batch_size=4,
        model_id="m",
        model_source="test",
        started_at="now",
        host={},
    )
    report.stages = {
        "engine": _stage("engine", 40.0, 25.0),
        "naive": _stage("naive", 10.0, 100.0),
        "daemon": _stage("daemon", 30.0, 200.0),
        "daemon_paced": _stage("daemon_paced", 20.0, 50.0),
    }
    evaluate(report)
    values = {t.name: (t.value, t.met) for t in report.targets}
    assert values["daemon frames/s >= 1.5 x naive"] == (pytest.approx(3.0), True)
    assert values["daemon frames/s >= 0.9 x bare engine"] == (pytest.approx(0.75), False)
    assert values["daemon p50 latency (paced) <= 1.5 x single-frame inference"] == (
        pytest.approx(2.0),
        False,
    )
    assert report.ratios["burst_latency_p50/engine_p50"] == pytest.approx(8.0)
    assert "MISSED" in format_report(report)


def test_size_must_fit_the_network(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "--size", "72", "--frames", "1", "--workdir", str(tmp_path / "w")]
    )
    assert result.exit_code == 1
    assert "multiple" in result.output
    assert not (tmp_path / "w" / "frames").exists()


@pytest.mark.skipif(tensorrt_importable(), reason="TensorRT is installed here")
def test_an_unavailable_backend_fails_before_any_work(tmp_path: Path) -> None:
    args = ["bench", "--frames", "1", "--size", "64", "--backend", "tensorrt"]
    result = CliRunner().invoke(app, [*args, "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert "TensorRT is not installed" in result.output
    assert "(c) naive loop" not in result.output  # no baseline ran first
    assert not (tmp_path / "w" / "frames").exists()


def test_refuses_a_work_folder_in_use(tmp_path: Path) -> None:
    (tmp_path / "keep.tif").write_bytes(b"raw data")
    result = CliRunner().invoke(app, ["bench", "--frames", "1", "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    assert "not empty" in result.output
    assert (tmp_path / "keep.tif").read_bytes() == b"raw data"


def test_batch_size_one_no_paced_run_and_compile_without_gpu(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    args = ["bench", "--frames", "1", "--size", "64", "--threads", "1", "--paced", "0"]
    args += ["--batch-size", "1", "--compile", "--json", str(out)]  # compile: CUDA only
    args += ["--segmenter-processes"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "particles measured in worker processes" in result.stdout
    report = json.loads(out.read_text())
    assert report["segmenter_processes"] is True
    assert set(report["stages"]) == STAGES - {"engine_batched", "daemon_paced"}
    assert report["batch_size"] == 1
    assert not report["backend"].endswith("-compiled")  # no GPU: the engines ran eager
    assert report["stages"]["daemon"]["details"]["daemon_stats"]["largest_batch"] == 1
    latency = [t for t in report["targets"] if "latency" in t["name"]]
    assert latency[0]["value"] is None and latency[0]["met"] is None


def test_python_dash_m_runs_the_same_commands() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "temseg", "bench", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: temseg bench" in result.stdout and "--compile" in result.stdout


def test_large_frames_are_simulated_fewer_times_and_materials_still_alternate(
    tmp_path: Path,
) -> None:
    import tifffile

    from temseg.bench.stages import UNIQUE_FRAMES, UNIQUE_PIXELS, unique_frames, write_frames

    for size in (64, 512, 1024, 1500, 2048, 4096, 8192):
        unique = unique_frames(size)
        assert unique % 2 == 0 and 2 <= unique <= UNIQUE_FRAMES
        assert unique == 2 or unique * size * size <= UNIQUE_PIXELS
    assert unique_frames(512) == UNIQUE_FRAMES and unique_frames(4096) == 2

    paths = write_frames(tmp_path, 3, 2048)  # two simulated, the third a shifted copy
    assert [p.name.split("_")[0] for p in paths] == ["Au", "CdSe", "Au"]
    images = [tifffile.imread(p) for p in paths]
    np.testing.assert_array_equal(images[2], np.roll(images[0], 2, axis=1))
    assert not np.array_equal(images[0], images[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_cpu_of_worker_processes_is_counted_under_their_own_group() -> None:
    import subprocess
    import sys

    from temseg.bench.stats import WORKERS, thread_cpu_s

    # 0.5 s burnt, 0.3 s asserted: /proc counts CPU time in ticks, by sampling, so it may
    # show a tick or two less than the process's own clock.
    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"
    worker = subprocess.Popen([sys.executable, "-c", burn + "\ninput()"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while thread_cpu_s([worker.pid])[WORKERS] < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        usage = thread_cpu_s([worker.pid])
        assert 0.3 <= usage[WORKERS] < 5
        assert usage["MainThread"] > 0  # this process's own threads still counted
        assert WORKERS not in thread_cpu_s()
    finally:
        worker.communicate(b"\n", timeout=30)
    assert thread_cpu_s([worker.pid])[WORKERS] == 0  # gone: nothing to read
