"""`temseg demo` end to end: simulated camera, in-process daemon, live subscriber."""

from __future__ import annotations

import sqlite3
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
