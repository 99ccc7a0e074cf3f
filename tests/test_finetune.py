"""Fine-tuning: model selection by validation Dice, frozen batch norm, --init names, summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import write_dataset
from typer.testing import CliRunner

from temseg.cli import app
from temseg.engine import load_engine
from temseg.inference import predict_probability
from temseg.model.bundle import default_model_path, load_bundle, torch_state_equal
from temseg.store import connect, promote_model, register_model
from temseg.trainer.data import load_folders, split_frames
from temseg.trainer.loop import TrainConfig, train


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ft") / "blobs", 10, seed=4)


@pytest.fixture(scope="module")
def start_model() -> Path:
    """The bundled model: Dice about 0.8 on the blobs' validation frames."""
    return default_model_path()


def validation_dice(bundle_dir: Path, data: Path, seed: int) -> float:
    """Pooled Dice at 0.5 on the validation frames ``train`` holds out for ``seed``."""
    _, val = split_frames(load_folders([data]), 0.2, seed)
    bundle = load_bundle(bundle_dir)
    engine = load_engine(bundle, backend="torch", device="cpu")
    tp = fp_fn = 0
    for frame in val:
        pred = predict_probability(frame.image, engine, bundle, pixel_nm=frame.pixel_nm) >= 0.5
        truth = frame.mask.astype(bool)
        tp += int(np.sum(pred & truth))
        fp_fn += int(np.sum(pred ^ truth))
    engine.close()
    return 2 * tp / (2 * tp + fp_fn)


def test_a_fine_tune_never_returns_a_model_worse_than_its_start(tmp_path, blobs, start_model):
    notes: list[str] = []
    out = tmp_path / "wrecked"
    # a learning rate this high wrecks the weights in the first steps
    result = train(
        TrainConfig(
            data=[blobs], out=out, init=start_model, epochs=2, patch=64, batch=4, lr=0.5,
            patience=0, on_note=notes.append,
        )
    )  # fmt: skip
    start_dice = validation_dice(start_model, blobs, seed=0)
    assert start_dice > 0.5
    assert max(h.val_dice for h in result.history) < result.initial_val_dice
    assert validation_dice(out, blobs, seed=0) >= start_dice
    assert result.best_epoch == 0 and result.final_val_dice == result.initial_val_dice
    assert torch_state_equal(load_bundle(out).model, load_bundle(start_model).model)
    assert any("its weights are kept" in n for n in notes)


def test_fine_tuning_keeps_batch_norm_statistics(tmp_path, blobs, start_model):
    def running_means(path: Path) -> list[torch.Tensor]:
        model = load_bundle(path).model
        return [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    common = dict(data=[blobs], init=start_model, epochs=1, patch=64, batch=4, lr=1e-3, seed=3)
    frozen = train(TrainConfig(out=tmp_path / "frozen", **common))  # type: ignore[arg-type]
    trained = train(
        TrainConfig(out=tmp_path / "trained", freeze_batch_norm=False, **common)  # type: ignore[arg-type]
    )
    start = running_means(start_model)
    if frozen.best_epoch:  # the start's weights kept would prove nothing
        assert all(
            torch.equal(a, b)
            for a, b in zip(running_means(tmp_path / "frozen"), start, strict=True)
        )
    if trained.best_epoch:
        assert not all(
            torch.equal(a, b)
            for a, b in zip(running_means(tmp_path / "trained"), start, strict=True)
        )
    meta = load_bundle(tmp_path / "frozen").metadata["training"]
    assert meta["frozen_batch_norm"] is True and meta["initial_val_dice"] > 0


def test_time_budget_stops_training(tmp_path, blobs):
    result = train(
        TrainConfig(data=[blobs], out=tmp_path / "m", epochs=5, patch=64, batch=4, max_minutes=0)
    )
    assert len(result.history) == 1 and result.out_of_time and not result.stopped_early


def test_train_init_bundled_with_material_prints_a_summary(tmp_path):
    data = write_dataset(tmp_path / "plain", 6, seed=5, pixel_nm=0.05)
    for sidecar in data.glob("*.json"):
        sidecar.unlink()  # frames without material metadata
    out = tmp_path / "tuned"
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(data), "--out", str(out), "--init", "bundled", "--material",
         "Au", "--epochs", "1", "--patch", "256", "--batch", "4", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    bundled = load_bundle(None)
    tuned = load_bundle(out)
    assert tuned.metadata["training"]["init"] == bundled.model_id
    assert "Au" in tuned.metadata["materials"] and "unknown" not in tuned.metadata["materials"]
    assert tuned.metadata["training"]["patch"] == 96 and tuned.pixel_nm == bundled.pixel_nm
    assert "patch 96 px instead of 256 px" in result.output
    assert "validation Dice: start " in result.output and "on 2 frames" in result.output
    assert "kept: " in result.output and "time: " in result.output
    assert f"written to {out}" in result.output


def test_init_takes_registered_ids_and_active(tmp_path, blobs, start_model):
    db = f"sqlite:///{tmp_path / 'reg.db'}"
    start = load_bundle(start_model)
    engine = connect(db)
    register_model(engine, start.model_id, "start", str(start_model), start.metadata)
    runner = CliRunner()
    common = ["--data", str(blobs), "--epochs", "1", "--patch", "64", "--batch", "4"]
    by_id = runner.invoke(
        app, ["train", *common, "--out", str(tmp_path / "a"), "--init", start.model_id, "--db", db]
    )
    assert by_id.exit_code == 0, by_id.output
    assert json.loads((tmp_path / "a" / "model.json").read_text())["training"]["init"] == (
        start.model_id
    )
    promote_model(engine, start.model_id)
    engine.dispose()
    active = runner.invoke(
        app, ["train", *common, "--out", str(tmp_path / "b"), "--init", "active", "--db", db]
    )
    assert active.exit_code == 0, active.output
    assert load_bundle(tmp_path / "b").metadata["training"]["init"] == start.model_id
    unknown = runner.invoke(
        app, ["train", *common, "--out", str(tmp_path / "c"), "--init", "feedfeed", "--db", db]
    )
    assert unknown.exit_code == 1
    assert "feedfeed: not a model bundle folder, nor a registered model id" in unknown.output
    assert not (tmp_path / "c").exists()
