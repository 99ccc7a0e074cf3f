"""`temseg demo` end to end: simulated camera, in-process daemon, live subscriber."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from temseg.cli import app
from temseg.model import build_unet, save_bundle


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(build_unet(), {"default_threshold": 0.5}, tmp_path_factory.mktemp("b"))


def test_demo_runs_end_to_end_and_keeps_the_database(tiny_bundle: Path, tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    args = ["demo", "--frames", "4", "--size", "64", "--interval", "0.2"]
    args += ["--model", str(tiny_bundle), "--db", str(db)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    live = [line for line in lines if line.startswith("seq=")]
    assert len(live) == 4
    assert {line.split("material=")[1].split()[0] for line in live} == {"Au", "CdSe"}
    summary = next(line for line in lines if line.startswith("summary:"))
    assert "4 masks and 0 errors for 4 frames" in summary and "seq gaps: none" in summary
    assert f"database: {db}" in lines
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT status, material FROM frames ORDER BY id").fetchall()
    assert rows == [("done", "Au"), ("done", "CdSe"), ("done", "Au"), ("done", "CdSe")]


def test_demo_removes_its_temporary_folder(tiny_bundle: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["demo", "--frames", "2", "--size", "64", "--interval", "0.1", "--model", str(tiny_bundle)],
    )
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("database:"))
    db = Path(line.split()[1])
    assert "temporary, removed" in line and not db.exists() and not db.parent.exists()


def test_demo_prints_the_metrics_url_and_serves_the_viewer_with_view(tiny_bundle: Path) -> None:
    from temseg.daemon.demo import run_demo

    lines: list[str] = []
    scraped: dict[str, str] = {}

    def linger() -> None:  # every frame is in: the daemon and the page still serve
        metrics = next(x for x in lines if x.startswith("metrics: ")).split()[1]
        page = next(x for x in lines if x.startswith("viewer: ")).split()[1]
        deadline = time.monotonic() + 30  # the last message may arrive before its event
        while "temseg_published_total 2.0" not in scraped.get("metrics", ""):
            assert time.monotonic() < deadline, scraped["metrics"]
            with urllib.request.urlopen(metrics, timeout=30) as response:
                scraped["metrics"] = response.read().decode()
        with urllib.request.urlopen(page + "state", timeout=30) as response:
            scraped["state"] = response.read().decode()

    summary = run_demo(
        frames=2,
        size=64,
        interval_s=0.1,
        model=str(tiny_bundle),
        view="127.0.0.1:0",
        linger=linger,
        echo=lines.append,
    )
    assert summary.masks == 2
    latest = json.loads(scraped["state"])["latest"]
    assert latest["name"] in {"frame_0000.tif", "frame_0001.tif"}
    assert latest["image"].startswith("data:image/png;base64,")


def test_the_demo_counts_about_the_particles_it_simulates() -> None:
    """On its defaults the demo found 101 particles where 31 were simulated: the bundled
    model leaves specks of a few pixels around and inside particles. Components under
    ``min_particle_nm`` (1 nm across) are not counted now."""
    from temseg.daemon.demo import run_demo

    summary = run_demo(frames=12, size=256, interval_s=0.05, echo=lambda _: None)
    assert summary.masks == 12 and summary.true_particles > 20
    assert abs(summary.particles - summary.true_particles) <= 0.25 * summary.true_particles
