"""Threshold sweep against brute force and closed forms; calibrate command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from temseg.calibrate.run import CalibrationError, calibrate, curve_table
from temseg.calibrate.sweep import (
    choose_threshold,
    confusion_curves,
    edge_warning,
    parse_criterion,
    threshold_grid,
)
from temseg.cli import app
from temseg.model.bundle import save_bundle
from temseg.model.unet import build_unet
from temseg.segment import binarize, confusion, scores
from temseg.store import (
    connect,
    latest_calibration,
    list_models,
    promote_model,
    register_model,
)


def known_probabilities(
    rng: np.random.Generator, n_particle: int, n_background: int, particle_range, background_range
) -> tuple[np.ndarray, np.ndarray]:
    """One 'frame' (flat) with uniform particle and background probabilities."""
    prob = np.concatenate(
        [rng.uniform(*particle_range, n_particle), rng.uniform(*background_range, n_background)]
    )
    mask = np.concatenate([np.ones(n_particle, np.uint8), np.zeros(n_background, np.uint8)])
    return prob.astype(np.float32), mask


def brute_force(prob_list, mask_list, thresholds):
    """(tp, fp, fn) and scores at every threshold by thresholding each frame."""
    counts, table = [], []
    for t in thresholds:
        total = np.zeros(3, dtype=np.int64)
        for p, m in zip(prob_list, mask_list, strict=True):
            total += confusion(binarize(p, float(t)), m)
        counts.append(total)
        pred = np.concatenate([binarize(p, float(t)) for p in prob_list])
        table.append(scores(pred, np.concatenate(mask_list)))
    return np.array(counts), table


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(3)
    probs, masks = [], []
    for _ in range(3):
        p, m = known_probabilities(rng, 20_000, 60_000, (0.3, 1.0), (0.0, 0.6))
        probs.append(p)
        masks.append(m)
    # pixels exactly on grid thresholds must count as at-or-above, as binarize does
    probs.append(np.array([0.0, 0.3, 0.5, 0.7, 1.0, 0.29999], dtype=np.float32))
    masks.append(np.array([0, 1, 0, 1, 1, 0], dtype=np.uint8))
    return probs, masks


def test_counts_match_thresholding_every_frame(frames):
    probs, masks = frames
    curves = confusion_curves(probs, masks, n_thresholds=101)
    expected, table = brute_force(probs, masks, curves.thresholds)
    np.testing.assert_array_equal(curves.tp, expected[:, 0])
    np.testing.assert_array_equal(curves.fp, expected[:, 1])
    np.testing.assert_array_equal(curves.fn, expected[:, 2])
    predicted = curves.predicted
    expected_precision = [t["precision"] for t, ok in zip(table, predicted, strict=True) if ok]
    np.testing.assert_allclose(curves.precision[predicted], expected_precision)
    np.testing.assert_allclose(curves.recall, [t["recall"] for t in table])
    np.testing.assert_allclose(curves.f1, [t["dice"] for t in table])
    assert curves.n_images == 4


def analytic_curves(t: np.ndarray, n_p: float, n_b: float):
    """Expected precision, recall, F1 for particle ~ U(0.3, 1), background ~ U(0, 0.6)."""
    tp = n_p * np.clip((1.0 - np.maximum(t, 0.3)) / 0.7, 0, 1)
    fp = n_b * np.clip((0.6 - t) / 0.6, 0, 1)
    fn = n_p - tp
    return tp / np.maximum(tp + fp, 1e-12), tp / n_p, 2 * tp / (2 * tp + fp + fn)


def test_max_f1_threshold_is_the_analytic_and_brute_force_one(frames):
    probs, masks = frames
    curves = confusion_curves(probs, masks)
    choice = choose_threshold(curves, "f1")
    _, table = brute_force(probs, masks, curves.thresholds)
    best = int(np.argmax([t["dice"] for t in table]))
    assert choice.threshold == pytest.approx(curves.thresholds[best])
    assert choice.f1 == pytest.approx(table[best]["dice"])
    fine = np.linspace(0, 1, 100_001)
    _, _, f1 = analytic_curves(fine, 60_000, 180_000)
    assert choice.threshold == pytest.approx(fine[np.argmax(f1)], abs=0.015)
    # F1 is a ratio of linear functions on [0.3, 0.6], increasing: the optimum is 0.6, where
    # the last background pixel drops out
    assert choice.threshold == pytest.approx(0.6)


def test_crossover_and_min_precision_criteria(frames):
    probs, masks = frames
    curves = confusion_curves(probs, masks)
    fine = np.linspace(0, 0.99, 99_001)  # below 1, where some pixel is still predicted
    precision, recall, _ = analytic_curves(fine, 60_000, 180_000)
    crossing = fine[np.argmin(np.abs(precision - recall))]
    cross = choose_threshold(curves, "precision-recall-crossover")
    assert cross.threshold == pytest.approx(crossing, abs=0.015)
    assert abs(cross.precision - cross.recall) < 0.02

    strict = choose_threshold(curves, "min-precision=0.9")
    lowest = fine[np.argmax(precision >= 0.9)]
    assert strict.threshold == pytest.approx(lowest, abs=0.015)
    assert strict.precision >= 0.9
    below = strict.index - 1
    assert curves.precision[below] < 0.9  # lowest such threshold
    assert strict.threshold > cross.threshold


def test_perfectly_separated_ties_resolve_to_the_middle():
    prob = np.array([0.1, 0.2, 0.15, 0.7, 0.8, 0.9])
    mask = np.array([0, 0, 0, 1, 1, 1])
    choice = choose_threshold(confusion_curves([prob], [mask]), "f1")
    assert choice.f1 == 1.0
    assert choice.threshold == pytest.approx(0.45)  # middle of (0.2, 0.7]


def test_criterion_errors(frames):
    probs, masks = frames
    curves = confusion_curves(probs, masks)
    with pytest.raises(CalibrationError, match="unknown criterion"):
        choose_threshold(curves, "accuracy")
    with pytest.raises(CalibrationError, match=r"min-precision needs a value in \(0, 1\]"):
        parse_criterion("min-precision=1.5")
    confused = confusion_curves([np.array([1.0, 1.0, 0.2])], [np.array([0, 1, 1])])
    with pytest.raises(CalibrationError, match=r"no threshold reaches precision 0\.9"):
        choose_threshold(confused, "min-precision=0.9")
    empty = confusion_curves([np.array([0.2, 0.9])], [np.array([0, 0])])
    with pytest.raises(CalibrationError, match="no particle pixel"):
        choose_threshold(empty, "f1")
    with pytest.raises(ValueError, match="shape"):
        confusion_curves([np.zeros((2, 2))], [np.zeros((3, 3))])
    assert threshold_grid(101)[50] == 0.5


def test_curve_json_and_table(frames):
    probs, masks = frames
    curves = confusion_curves(probs, masks, n_thresholds=201)
    data = json.loads(json.dumps(curves.to_dict()))
    assert set(data) == {"thresholds", "precision", "recall", "f1"}
    assert len(data["thresholds"]) == 201 and data["thresholds"][100] == 0.5
    lines = curve_table(curves).splitlines()
    assert len(lines) == 22 and lines[-1].split()[0] == "1.00"


# --- end to end, with a real (untrained) network --------------------------------------


def write_frame(folder: Path, name: str, material: str, rng, pixel_nm: float | None = 0.1):
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:64, :64]
    mask = ((yy - 32) ** 2 + (xx - rng.integers(20, 44)) ** 2 < 150).astype(np.uint8)
    image = (1000 + 300.0 * mask + 50 * rng.standard_normal((64, 64))).astype(np.uint16)
    tifffile.imwrite(folder / f"{name}.tif", image)
    tifffile.imwrite(folder / f"{name}_mask.tif", mask * 255)
    meta = {"material": material} | ({} if pixel_nm is None else {"pixel_nm": pixel_nm})
    (folder / f"{name}.json").write_text(json.dumps(meta))


@pytest.fixture()
def model_dir(tmp_path):
    return save_bundle(build_unet(), {"pixel_nm": 0.1, "name": "untrained"}, tmp_path / "model")


def test_calibrate_command_writes_row_and_plot(tmp_path, model_dir):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for i in range(3):
        write_frame(data, f"cdse{i}", "CdSe", rng)
    write_frame(data, "au0", "Au", rng)
    db = f"sqlite:///{tmp_path / 'temseg.db'}"
    result = CliRunner().invoke(
        app,
        ["calibrate", "--material", "CdSe", "--data", str(data), "--model", str(model_dir),
         "--db", db, "--out", str(tmp_path / "plots"), "--backend", "torch"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "CdSe: 3 frames" in result.output
    assert (tmp_path / "plots" / "calibration_CdSe.png").stat().st_size > 1000
    engine = connect(db)
    model_id = json.loads((model_dir / "model.json").read_text())["model_id"]
    row = latest_calibration(engine, "CdSe", model_id)
    assert row is not None and row.n_images == 3 and row.criterion == "f1"
    assert f"chosen threshold {row.threshold:.4g}" in result.output
    assert len(row.curve["thresholds"]) == 101 + 2 * 8  # even grid and log tails
    assert row.dice == pytest.approx(max(row.curve["f1"]))
    assert latest_calibration(engine, "Au", model_id) is None


def test_calibrate_uses_the_active_model(tmp_path, model_dir):
    rng = np.random.default_rng(1)
    write_frame(tmp_path / "data", "au0", "Au", rng)
    db = f"sqlite:///{tmp_path / 'temseg.db'}"
    engine = connect(db)
    meta = json.loads((model_dir / "model.json").read_text())
    register_model(engine, meta["model_id"], "untrained", str(model_dir), meta)
    promote_model(engine, meta["model_id"])
    result = calibrate("Au", [tmp_path / "data"], db=db, out=tmp_path, backend="torch")
    assert result.model_id == meta["model_id"] == list_models(engine)[0].model_id
    assert result.calibration_id == latest_calibration(engine, "Au", meta["model_id"]).id


def test_calibrate_errors(tmp_path, model_dir):
    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    write_frame(data, "au0", "Au", rng)
    write_frame(data, "au1", "Au", rng, pixel_nm=None)
    with pytest.raises(CalibrationError, match=r"no labelled frames of CdSe; .*found: Au \(2\)"):
        calibrate("CdSe", [data], model=model_dir, out=tmp_path)
    warnings: list[str] = []
    calibrate("Au", [data], model=model_dir, out=tmp_path, on_warning=warnings.append)
    assert len(warnings) == 1 and "au1.tif: pixel size unknown" in warnings[0]

    far = tmp_path / "far"
    write_frame(far, "au0", "Au", rng, pixel_nm=1.5)
    with pytest.raises(CalibrationError, match=r"pixel size 1.5 nm vs the model's 0.1 nm"):
        calibrate("Au", [far], model=model_dir, out=tmp_path)

    empty = tmp_path / "empty"
    empty.mkdir()
    tifffile.imwrite(empty / "a.tif", np.full((64, 64), 7, np.uint16))
    tifffile.imwrite(empty / "a_mask.tif", np.zeros((64, 64), np.uint8))
    (empty / "a.json").write_text('{"material": "Au", "pixel_nm": 0.1}')
    with pytest.raises(CalibrationError, match="empty masks"):
        calibrate("Au", [empty], model=model_dir, out=tmp_path)

    result = CliRunner().invoke(
        app, ["calibrate", "--material", "Au", "--data", str(data), "--model", str(model_dir),
              "--criterion", "best", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 1 and "unknown criterion 'best'" in result.output


# --- the grid's tails and its edges ---------------------------------------------------


def test_log_tails_resolve_thresholds_near_0_and_1():
    grid = threshold_grid(101, tail_per_decade=4)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0)
    assert np.isin(np.linspace(0, 1, 101), grid).all()  # the even grid is kept
    assert grid[1] == pytest.approx(1e-4) and grid[-2] == pytest.approx(1 - 1e-4)
    assert np.sum(grid < 0.01) == 9 and np.sum(grid > 0.99) == 9  # 0 + 4 per decade, 2 decades
    # a confident network: particle pixels at 3e-3, background at 1e-3
    prob = np.array([1e-3] * 50 + [3e-3] * 50)
    mask = np.array([0] * 50 + [1] * 50)
    even = choose_threshold(confusion_curves([prob], [mask]), "f1")
    assert even.threshold == 0.0 and even.f1 < 0.7  # the even grid cannot separate them
    fine = confusion_curves([prob], [mask], grid)
    choice = choose_threshold(fine, "f1")
    assert choice.f1 == 1.0 and 1e-3 < choice.threshold <= 3e-3
    assert edge_warning(fine, choice) is None
    assert "lowest of the grid" in str(edge_warning(confusion_curves([prob], [mask]), even))


def test_a_threshold_at_the_top_of_the_grid_is_warned_about():
    grid = threshold_grid(101, tail_per_decade=4)
    prob = np.array([1.0] * 10 + [0.99995] * 40 + [0.2] * 50)
    mask = np.array([1] * 10 + [0] * 40 + [0] * 50)
    curves = confusion_curves([prob], [mask], grid)
    choice = choose_threshold(curves, "f1")
    assert choice.threshold == 1.0
    warning = edge_warning(curves, choice)
    assert warning is not None and "highest of the grid" in warning and "fine-tune" in warning
