"""Model files replaced by garbage while the daemon runs: the serving model keeps serving,
a promotion of a broken bundle is refused (by ``temseg models promote``) or rejected (by the
daemon, when it was promoted behind the command's back)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from faultkit import tiff_bytes, wait_for
from framekit import frame_rows, write_renamed
from typer.testing import CliRunner

from temseg.cli import app
from temseg.model import build_unet, save_bundle
from temseg.store import active_model, connect, promote_model, register_model


def make_bundle(folder: Path, seed: int) -> tuple[Path, str]:
    torch.manual_seed(seed)
    path = save_bundle(build_unet(), {"default_threshold": 0.5}, folder)
    return path, str(json.loads((path / "model.json").read_text())["model_id"])


def model_of(db: Path, frame: Path) -> str | None:
    rows = [r for r in frame_rows(db) if r["source_path"] == str(frame)]
    return rows[0]["model_id"] if rows and rows[0]["status"] == "done" else None


@pytest.mark.slow
def test_garbage_model_files_never_replace_the_serving_model(
    make_daemon, acq: Path, db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path_a, id_a = make_bundle(tmp_path / "a", 0)
    path_b, id_b = make_bundle(tmp_path / "b", 1)
    path_c, _ = make_bundle(tmp_path / "c", 2)
    engine = connect(str(db_path))
    try:
        register_model(engine, id_a, "a", str(path_a), {})
        register_model(engine, id_b, "b", str(path_b), {})
        promote_model(engine, id_a)
        daemon = make_daemon(model=None)
        assert daemon.model is not None and daemon.model.model_id == id_a

        def segment(name: str) -> str | None:
            frame = acq / f"{name}.tif"
            write_renamed(frame, tiff_bytes(len(name)))
            assert wait_for(lambda: model_of(db_path, frame) is not None, 30), name
            return model_of(db_path, frame)

        assert segment("first") == id_a
        # The serving bundle's files are overwritten in place: it is already in memory.
        (path_a / "model.safetensors").write_bytes(os.urandom(4096))
        (path_a / "model.json").write_text("garbage")
        assert segment("after_overwrite") == id_a

        # The command refuses to promote a bundle whose weights became garbage, or whose
        # weights were swapped for another network's.
        runner = CliRunner()
        (path_b / "model.safetensors").write_bytes((path_c / "model.safetensors").read_bytes())
        result = runner.invoke(app, ["models", "promote", id_b, "--db", str(db_path)])
        assert result.exit_code == 1 and "does not match the weights" in result.output
        (path_b / "model.safetensors").write_bytes(os.urandom(4096))
        result = runner.invoke(app, ["models", "promote", id_b, "--db", str(db_path)])
        assert result.exit_code == 1 and "cannot be promoted" in result.output
        active = active_model(engine)
        assert active is not None and active.model_id == id_a

        # Promoted anyway (straight into the database): the daemon rejects it and keeps A.
        with caplog.at_level(logging.ERROR, logger="temseg.daemon"):
            promote_model(engine, id_b)
            assert segment("after_bad_promotion") == id_a
            assert segment("and_after") == id_a
        assert any("model rejected" in r.getMessage() for r in caplog.records)
        assert daemon.wait_idle(30) and daemon.healthy()
        stats = daemon.stop()
        assert (stats.model_rejects, stats.model_swaps, stats.failed) == (1, 0, 0)
    finally:
        engine.dispose()
