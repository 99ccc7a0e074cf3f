"""Training data, augmentation, the training loop, fine-tuning and the models commands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from temseg.cli import app
from temseg.model.bundle import load_bundle, save_bundle
from temseg.model.unet import UNet, build_unet
from temseg.store import active_model, connect, list_models, register_model
from temseg.trainer.augment import augment_patch, rotate_pair
from temseg.trainer.data import (
    DataError,
    PatchDataset,
    find_pairs,
    load_folders,
    load_hdf5,
    read_labelled_frame,
    select_materials,
    split_frames,
)
from temseg.trainer.loop import TrainConfig, fit_patch, segmentation_loss, train


def blob_frame(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Round particles with lattice fringes on a noisy background (uint16, uint8 0/1)."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(2, 5)):
        cy, cx, r = rng.uniform(10, size - 10), rng.uniform(10, size - 10), rng.uniform(6, 14)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    theta = rng.uniform(0, np.pi)
    fringes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / 3.0)
    image = 1000 + 150 * rng.standard_normal((size, size)) + 400 * fringes * mask
    return np.clip(image, 0, None).astype(np.uint16), mask


def write_dataset(
    folder: Path, n: int, seed: int = 0, *, mask_scale: int = 1, pixel_nm: float | None = 0.1
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, mask = blob_frame(rng)
        tifffile.imwrite(folder / f"f{i:02d}.tif", image)
        tifffile.imwrite(folder / f"f{i:02d}_mask.tif", (mask * mask_scale).astype(np.uint8))
        meta = {"material": "Au" if i % 2 else "CdSe"}
        if pixel_nm is not None:
            meta["pixel_nm"] = pixel_nm
        (folder / f"f{i:02d}.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "blobs", 12)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "blobs-model"
    config = TrainConfig(
        data=[dataset], out=out, epochs=6, patch=64, batch=4, lr=3e-3, seed=1, patience=0
    )
    return config, train(config)


# --- data ----------------------------------------------------------------------------


def test_pairs_metadata_and_0_255_masks(tmp_path, dataset):
    pairs = find_pairs(dataset)
    assert [p[0].name for p in pairs][:2] == ["f00.tif", "f01.tif"]
    assert pairs[0][1].name == "f00_mask.tif"
    scaled = write_dataset(tmp_path / "scaled", 2, mask_scale=255)
    frames = load_folders([scaled])
    reference = load_folders([write_dataset(tmp_path / "ones", 2)])
    for frame, ref in zip(frames, reference, strict=True):
        assert frame.mask.dtype == np.uint8 and set(np.unique(frame.mask)) <= {0, 1}
        np.testing.assert_array_equal(frame.mask, ref.mask)
    assert frames[0].material == "CdSe" and frames[1].material == "Au"
    assert frames[0].pixel_nm == 0.1 and frames[0].source == "scaled"


def test_bad_masks_and_unpaired_files_are_rejected(tmp_path):
    folder = write_dataset(tmp_path / "d", 3)
    tifffile.imwrite(folder / "f01_mask.tif", np.full((96, 96), 0.3, np.float32))
    with pytest.raises(DataError, match=r"f01_mask.tif: floating-point mask values must be 0/1"):
        load_folders([folder])
    tifffile.imwrite(folder / "f01_mask.tif", np.zeros((80, 96), np.uint8))
    with pytest.raises(DataError, match=r"shape mismatch: .*f01\.tif is \(96, 96\), .*f01_mask"):
        load_folders([folder])
    (folder / "f02_mask.tif").unlink()
    (folder / "lonely_mask.tif").write_bytes((folder / "f00_mask.tif").read_bytes())
    with pytest.raises(DataError, match="unpaired") as info:
        find_pairs(folder)
    assert "f02.tif: no mask f02_mask.tif" in str(info.value)
    assert "lonely_mask.tif: no image lonely.tif" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no labelled frames"):
        find_pairs(empty)
    (empty / "x.tif").write_bytes(b"not a tiff")
    (empty / "x_mask.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match=r"x\.tif"):
        read_labelled_frame(empty / "x.tif", empty / "x_mask.tif")


def test_material_selection_and_stratified_split(dataset):
    frames = load_folders([dataset])
    assert len(select_materials(frames, ["Au"])) == 6
    with pytest.raises(DataError, match="no labelled frames of Pt; materials found: Au, CdSe"):
        select_materials(frames, ["Pt"])
    train_frames, val = split_frames(frames, 0.2, seed=0)
    assert len(train_frames) + len(val) == 12
    assert {f.material for f in val} == {"Au", "CdSe"}
    assert not {f.name for f in val} & {f.name for f in train_frames}
    with pytest.raises(DataError, match="at least 2"):
        split_frames(frames[:1], 0.2, seed=0)
    for n in (5, 6, 9):  # one material, 20 % would be one frame: model selection needs two
        same = [f for f in frames if f.material == "Au"][:3] + frames[:n]
        same = [dataclasses.replace(f, material="Au") for f in same][:n]
        rest, val = split_frames(same, 0.2, seed=n)
        assert len(val) == 2 and len(rest) == n - 2
    rest, val = split_frames(frames[:4], 0.2, seed=0)
    assert len(val) >= 1 and len(rest) >= 1


def test_hdf5_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    pairs = [blob_frame(rng, 64) for _ in range(3)]
    with h5py.File(tmp_path / "images.h5", "w") as fh:
        fh["images"] = np.stack([p[0] for p in pairs])[..., None].astype(np.float32)
    one_hot = np.stack([np.stack([1 - p[1], p[1]], axis=-1) for p in pairs]).astype(np.float32)
    with h5py.File(tmp_path / "maps.h5", "w") as fh:
        fh["maps"] = one_hot
    frames = load_hdf5(tmp_path / "images.h5", tmp_path / "maps.h5", material="Au")
    assert len(frames) == 3 and frames[0].material == "Au"
    np.testing.assert_array_equal(frames[2].mask, pairs[2][1])


# --- augmentation --------------------------------------------------------------------


def test_rotation_wraps_and_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    _, mask = blob_frame(rng, 64)
    rotated, rotated_mask = rotate_pair(mask.astype(np.float32), mask, 33.0)
    assert set(np.unique(rotated_mask)) <= {0, 1}
    assert np.mean((rotated > 0.5) == rotated_mask.astype(bool)) > 0.97
    flat, _ = rotate_pair(np.full((64, 64), 0.7, np.float32), mask, 45.0)
    np.testing.assert_allclose(flat, 0.7, rtol=1e-5)  # wrap-around fill: no empty corners
    quarter, quarter_mask = rotate_pair(mask.astype(np.float32), mask, 90.0)
    np.testing.assert_allclose(quarter, np.rot90(mask), atol=1e-6)
    np.testing.assert_array_equal(quarter_mask, np.rot90(mask))


def test_patches_are_reproducible_and_well_formed():
    rng = np.random.default_rng(0)
    image, mask = blob_frame(rng, 96)
    image = image.astype(np.float32) / image.max()
    a = augment_patch(image, mask, 64, np.random.default_rng(5))
    b = augment_patch(image, mask, 64, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == a[1].shape == (64, 64) and a[0].dtype == np.float32
    with pytest.raises(ValueError, match="does not fit"):  # never padded silently
        augment_patch(image[:40, :40], mask[:40, :40], 64, np.random.default_rng(1))
    # a frame too small for the rotated window (91 px) still gives clean patches
    for seed in range(8):
        patch, patch_mask = augment_patch(image[:70, :70], mask[:70, :70], 64, rng_of(seed))
        assert patch.shape == (64, 64) and set(np.unique(patch_mask)) <= {0, 1}


def rng_of(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_patch_fits_the_smallest_frame(dataset):
    frames = load_folders([dataset])
    assert fit_patch(frames, 256, 16) == 96  # 96 px frames
    assert fit_patch(frames, 64, 16) == 64
    frames[3].image = frames[3].image[:12, :40]
    with pytest.raises(DataError, match=r"f03: 40 x 12 px is smaller than the network's 16 px"):
        fit_patch(frames, 64, 16)


def test_patch_dataset_epochs(dataset):
    frames = load_folders([dataset])
    for frame in frames:
        frame.image = frame.image.astype(np.float32) / frame.image.max()
    patches = PatchDataset(frames, 64, seed=3)
    assert len(patches) == 2 * len(frames)  # 96 x 96 frames hold about two 64 x 64 patches
    x, y = patches[5]
    assert x.shape == (1, 64, 64) and y.shape == (64, 64) and y.dtype == torch.int64
    torch.testing.assert_close(patches[5][0], x)
    patches.set_epoch(1)
    assert not torch.equal(patches[5][0], x)


def test_loss_is_low_for_confident_right_answers():
    target = torch.zeros(1, 8, 8, dtype=torch.int64)
    target[0, 2:6, 2:6] = 1
    right = torch.stack([1 - target, target], dim=1).float() * 20 - 10
    assert float(segmentation_loss(right, target)) < 1e-3
    assert float(segmentation_loss(-right, target)) > 10


# --- training ------------------------------------------------------------------------


def test_training_lowers_the_loss_and_writes_a_loadable_bundle(trained):
    config, result = trained
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert min(h.val_loss for h in result.history) < result.initial_val_loss
    bundle = load_bundle(config.out)
    assert bundle.model_id == result.model_id
    meta = bundle.metadata
    assert meta["materials"] == ["Au", "CdSe"] and meta["pixel_nm"] == 0.1
    assert meta["normalisation"] == {"method": "max"} and meta["thresholds"] == {}
    assert set(meta["metrics"]) == {"Au", "CdSe"}
    assert meta["metrics"]["Au"]["n_val"] >= 1
    training = meta["training"]
    assert training["data"] == ["blobs"] and training["n_train"] + training["n_val"] == 12
    assert training["epochs_run"] == 6 and training["init"] is None
    assert training["device"] == "cpu" and training["preset"] == "groschner2021"
    assert (config.out / "training_curve.png").stat().st_size > 1000
    assert bundle.onnx_path is not None


def test_init_starts_from_the_given_weights(tmp_path, dataset):
    torch.manual_seed(123)
    start = save_bundle(
        build_unet(),
        {"normalisation": {"method": "minmax"}, "pixel_nm": None, "materials": ["Pt"]},
        tmp_path / "start",
    )
    init = load_bundle(start)
    seen: list[bool] = []

    def first_step(step: int, loss: float, model: UNet) -> None:
        if step == 0:
            reference = dict(init.model.named_parameters())
            seen.append(all(torch.equal(p, reference[n]) for n, p in model.named_parameters()))

    out = tmp_path / "tuned"
    result = train(
        TrainConfig(
            data=[dataset], out=out, init=start, epochs=1, patch=64, batch=4, on_step=first_step
        )
    )
    assert seen == [True]
    tuned = load_bundle(out)
    assert tuned.model_id != init.model_id
    assert tuned.normalisation == "minmax" and tuned.pixel_nm is None  # the init's, kept
    assert tuned.metadata["training"]["init"] == init.model_id
    assert tuned.metadata["materials"] == ["Au", "CdSe", "Pt"]
    assert result.history[0].epoch == 1


def test_bad_settings_are_refused(tmp_path, dataset):
    with pytest.raises(ValueError, match="multiple of 16"):
        train(TrainConfig(data=[dataset], out=tmp_path / "m", patch=40))
    with pytest.raises(DataError, match="materials found"):
        train(TrainConfig(data=[dataset], out=tmp_path / "m", materials=["Pt"], patch=64))
    assert not (tmp_path / "m").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_precision_training_on_cuda(tmp_path, dataset):
    out = tmp_path / "cuda-model"
    result = train(
        TrainConfig(data=[dataset], out=out, epochs=3, patch=64, batch=4, lr=3e-3, device="cuda")
    )
    assert np.isfinite([h.train_loss for h in result.history]).all()
    bundle = load_bundle(out)
    assert bundle.metadata["training"]["device"] == "cuda"
    assert next(bundle.model.parameters()).device.type == "cpu"


# --- command line --------------------------------------------------------------------


def test_train_command_registers_and_models_promote(tmp_path, dataset):
    db = f"sqlite:///{tmp_path / 'temseg.db'}"
    out = tmp_path / "cli-model"
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["train", "--data", str(dataset), "--out", str(out), "--epochs", "1", "--patch", "64",
         "--batch", "4", "--materials", "Au", "--db", db],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output and "written to" in result.output
    model_id = load_bundle(out).model_id
    engine = connect(db)
    assert [m.model_id for m in list_models(engine)] == [model_id]
    assert load_bundle(out).metadata["materials"] == ["Au"]

    listing = runner.invoke(app, ["models", "list", "--db", db])
    assert listing.exit_code == 0 and model_id in listing.output and "Au " in listing.output

    promoted = runner.invoke(app, ["models", "promote", model_id, "--db", db])
    assert promoted.exit_code == 0, promoted.output
    assert active_model(engine).model_id == model_id
    assert f"* {model_id}" in runner.invoke(app, ["models", "list", "--db", db]).output

    gone = tmp_path / "gone"
    register_model(engine, "0123456789abcdef", "gone", str(gone), {})
    refused = runner.invoke(app, ["models", "promote", "0123456789abcdef", "--db", db])
    assert refused.exit_code == 1
    assert (
        "no longer loads" in refused.output and f"active model stays {model_id}" in refused.output
    )
    assert active_model(engine).model_id == model_id
    unknown = runner.invoke(app, ["models", "promote", "feedfeedfeedfeed", "--db", db])
    assert unknown.exit_code == 1 and "no registered model 'feedfeedfeedfeed'" in unknown.output
