"""``temseg status`` on a small real database."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from temseg import store
from temseg.cli import app


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "temseg.db"
    engine = store.connect(path)
    frames = [
        ("Au", "done", 3, 40.0, None),
        ("Au", "done", 5, 60.0, None),
        ("CdSe", "done", 2, 20.0, None),
        ("CdSe", "failed", None, None, "not a TIFF"),
    ]
    for i, (material, status, n, latency, error) in enumerate(frames):
        store.record_frame(
            engine,
            source_path=f"/acq/frame_{i}.tif",
            sha256=f"{i:064x}",
            size_bytes=1024,
            status=status,
            material=material,
            n_particles=n,
            latency_ms=latency,
            error=error,
        )
    store.register_model(engine, "unet-1234", "groschner2021", "/models/unet-1234", {})
    store.promote_model(engine, "unet-1234")
    engine.dispose()
    return path


def test_status_text(db: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--db", str(db), "--minutes", "5"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("database  sqlite:///")
    assert f"(schema {store.SCHEMA_VERSION})" in lines[0]
    assert lines[1] == "model     unet-1234"
    assert lines[2] == "frames    4: 3 done, 1 failed"
    assert lines[3].split() == ["Au", "2", "done"]
    assert lines[4].split() == ["CdSe", "1", "done,", "1", "failed"]
    assert lines[5].endswith("/acq/frame_3.tif")
    assert lines[6].split(None, 2) == ["failed", "(CdSe):", "not a TIFF"]
    assert lines[7] == "last 5 min  4 frames, 0.80 frames/min, mean latency 40 ms"


def test_status_json(db: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--db", f"sqlite:///{db}", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["total"] == 4
    assert summary["by_status"] == {"done": 3, "failed": 1}
    assert summary["by_material"] == {"Au": {"done": 2}, "CdSe": {"done": 1, "failed": 1}}
    assert summary["active_model"] == "unet-1234"
    assert summary["last_frame"]["source_path"] == "/acq/frame_3.tif"
    assert summary["window_minutes"] == 10 and summary["window_frames"] == 4
    assert summary["mean_latency_ms"] == pytest.approx(40.0)


def test_status_errors(tmp_path: Path, db: Path) -> None:
    missing = CliRunner().invoke(app, ["status", "--db", str(tmp_path / "nope.db")])
    assert missing.exit_code == 1 and "no temseg database" in missing.output
    assert not (tmp_path / "nope.db").exists()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_info SET version = 99")
    newer = CliRunner().invoke(app, ["status", "--db", str(db)])
    assert newer.exit_code == 1 and "newer than this temseg" in newer.output


def test_status_empty_database(tmp_path: Path) -> None:
    store.connect(tmp_path / "empty.db").dispose()
    result = CliRunner().invoke(app, ["status", "--db", str(tmp_path / "empty.db")])
    assert result.exit_code == 0, result.output
    assert "frames    0: none" in result.stdout
    assert "model     none active" in result.stdout
    assert result.stdout.splitlines()[-1].endswith("0 frames, 0.00 frames/min, mean latency -")


def test_status_groups_by_instrument_on_a_shared_server(pg_url: str) -> None:
    engine = store.connect(pg_url)
    try:
        for i, (instrument, status) in enumerate(
            [("titan", "done"), ("titan", "done"), ("talos", "done"), ("talos", "failed")]
        ):
            store.record_frame(
                engine,
                source_path=f"/acq/{instrument}/{i}.tif",
                sha256=f"{i:064x}",
                size_bytes=1,
                status=status,
                model_id="m1",
                instrument=instrument,
            )
    finally:
        engine.dispose()
    result = CliRunner().invoke(app, ["status", "--db", pg_url, "--by", "instrument"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("database  postgresql+psycopg://")
    assert lines[2] == "frames    4: 3 done, 1 failed (by instrument)"
    assert lines[3].split() == ["talos", "1", "done,", "1", "failed"]
    assert lines[4].split() == ["titan", "2", "done"]
    as_json = CliRunner().invoke(app, ["status", "--db", pg_url, "--json"])
    assert json.loads(as_json.stdout)["by_instrument"] == {
        "talos": {"done": 1, "failed": 1},
        "titan": {"done": 2},
    }


@pytest.mark.parametrize(
    "command", [["status"], ["models", "list"], ["models", "promote", "m1"], ["reprocess", "."]]
)
def test_an_unreachable_server_is_one_error_line(command: list[str]) -> None:
    url = f"postgresql+psycopg://temseg@127.0.0.1:{free_port()}/temseg?connect_timeout=5"
    result = CliRunner().invoke(app, [*command, "--db", url])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert "127.0.0.1" in result.output and "Traceback" not in result.output
