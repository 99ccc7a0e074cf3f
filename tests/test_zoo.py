"""Importing the published networks: architectures, weights, normalisation, safety.

The originals are rebuilt here in their own frameworks with random weights
(Keras 3 on the PyTorch backend for pyNanoFind; PyTorch modules mirroring
HRTEM-Generalization's notebook classes), saved as the published files were
saved, imported, and compared with temseg's output.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from framekit import frame_rows, write_renamed
from scipy.signal import medfilt2d
from test_calibrate import write_frame
from test_trainer import write_dataset
from torch import nn
from typer.testing import CliRunner

from temseg.calibrate.run import calibrate
from temseg.cli import app
from temseg.engine import load_engine
from temseg.frames.normalise import normalise
from temseg.inference import predict_probability
from temseg.model.bundle import BundleError, load_bundle, save_bundle
from temseg.model.unet import UNetConfig, build_unet, fold_batch_norm
from temseg.model.zoo import ImportFailed, import_model
from temseg.store import connect, latest_calibration, list_models, promote_model, register_model
from temseg.trainer.loop import TrainConfig, train

SIZE = 64  # pixels; a multiple of 16, the networks' size multiple


# --- the originals ----------------------------------------------------------------------------


def keras_get_unet(size: int):
    """pyNanoFind's get_unet((size, size, 1), 2) in Keras 3."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    from keras import layers

    def conv_bn(x, filters):
        x = layers.Conv2D(filters, (3, 3), padding="same")(x)
        return layers.BatchNormalization(epsilon=1e-4)(x)

    inputs = keras.Input(shape=(size, size, 1))
    x, skips = inputs, []
    for filters in (4, 8, 16, 32):
        pre = conv_bn(x, filters)
        skips.append(layers.Activation("relu")(pre))
        x = layers.MaxPooling2D((2, 2), strides=(2, 2))(pre)
    for _ in range(2):
        x = layers.Activation("relu")(conv_bn(x, 32))
    for filters, skip in zip((32, 16, 8, 4), reversed(skips), strict=True):
        x = layers.UpSampling2D((2, 2))(x)
        x = layers.concatenate([skip, x], axis=3)
        x = layers.Activation("relu")(conv_bn(x, filters))
        x = layers.Dropout(0.2)(x)
        x = layers.Activation("relu")(conv_bn(x, filters))
    out = layers.Conv2D(2, (1, 1), activation="sigmoid", name="final_layer")(x)
    return keras.Model(inputs=inputs, outputs=out)


def keras_weights_file(path: Path, seed: int = 0) -> object:
    """A random-weight pyNanoFind U-Net saved in the Keras 2 save_weights layout."""
    import h5py

    model = keras_get_unet(SIZE)
    from keras.src.legacy.saving import legacy_h5_format

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if len(weights) == 4:  # batch norm: gamma, beta, mean, variance
            weights = [
                rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else rng.normal(0, 0.3, w.shape)
                for i, w in enumerate(weights)
            ]
        elif weights:
            weights = [rng.normal(0, 0.4, w.shape) for w in weights]
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return model


class ResidualBlock(nn.Module):
    """HRTEM-Generalization's residual block, with the notebook's attribute names."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(c_out), nn.BatchNorm2d(c_out)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.conv_add = nn.Conv2d(c_in, c_out, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.conv_add(x))


class UNet(nn.Module):
    """HRTEM-Generalization's UNet(num_blocks, filter_sequence, max_pool_sequence)."""

    def __init__(self, num_blocks: int, filters: list[int], pools: list[int]) -> None:
        super().__init__()
        self.downs, self.ups = nn.ModuleList(), nn.ModuleList()
        self.pools, self.upsamples = nn.ModuleList(), nn.ModuleList()
        c_in = 1
        for i in range(num_blocks):
            self.downs.append(ResidualBlock(c_in, filters[i]))
            c_in = filters[i]
            self.pools.append(nn.MaxPool2d(kernel_size=pools[i], stride=pools[i]))
        for i in reversed(range(num_blocks)):
            self.ups.append(ResidualBlock(filters[i] + filters[i + 1], filters[i]))
            self.upsamples.append(nn.Upsample(scale_factor=pools[i]))
        self.bottleneck = ResidualBlock(filters[num_blocks - 1], filters[num_blocks])
        self.final_conv = nn.Conv2d(filters[0], 2, kernel_size=1)
        self.num_blocks = num_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i in range(self.num_blocks):
            x = self.downs[i](x)
            skips.append(x)
            x = self.pools[i](x)
        x = self.bottleneck(x)
        for i, skip in enumerate(reversed(skips)):
            x = self.ups[i](torch.cat((skip, self.upsamples[i](x)), dim=1))
        return self.final_conv(x)


def hrtem_file(path: Path, seed: int = 0) -> UNet:
    """A random-weight residual U-Net saved whole with torch.save, as the published files."""
    torch.manual_seed(seed)
    model = UNet(4, [4, 8, 16, 32, 64], [2, 2, 2, 2])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.3)
    model.eval()
    image = frame(2).astype(np.float64)  # shift the head so this frame has both classes
    x = torch.from_numpy(((image - image.mean()) / image.std()).astype(np.float32))[None, None]
    with torch.no_grad():
        logits = model(x)
        model.final_conv.bias[1] -= torch.median(logits[0, 1] - logits[0, 0])
    torch.save(model, path)
    return model


def frame(seed: int = 0, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = 800 + 60 * rng.standard_normal((size, size))
    image += 300 * ((yy - size / 2) ** 2 + (xx - size / 3) ** 2 < (size / 5) ** 2)
    image[rng.integers(0, size, 5), rng.integers(0, size, 5)] = 4000  # x-ray hits
    return image.astype(np.uint16)


def pynanofind_median_filter(image: np.ndarray) -> np.ndarray:
    """pyNanoFind's median_filter, step for step (scipy.signal.medfilt2d on a reflected pad)."""
    median = medfilt2d(np.pad(image.astype("float32"), 3, "reflect"), 3)[3:-3, 3:-3]
    final = image.astype(np.float64).copy()
    far = np.abs(image - median) > 5 * image.std()
    final[far] = median[far]
    final = final / final.std()
    final = final - final.min()
    return final / final.max()


# --- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_pynanofind_normalisation_matches_their_median_filter(dtype: type) -> None:
    image = frame(3, 96).astype(dtype)
    ours = normalise(image, "pynanofind")
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, pynanofind_median_filter(image), atol=1e-6)
    assert ours.min() == 0.0 and ours.max() == pytest.approx(1.0)
    hits = image == 4000  # x-ray hits: the top of a min-max range, replaced here
    assert hits.any() and np.all(normalise(image, "minmax")[hits] > 0.99)
    assert np.all(ours[hits] < 0.9)


def test_pynanofind_normalisation_of_a_constant_frame_is_zero() -> None:
    assert not normalise(np.full((32, 32), 7, np.uint8), "pynanofind").any()


# --- architectures and bundles ----------------------------------------------------------------


@pytest.mark.parametrize("preset", ["pynanofind", "hrtem-generalization"])
def test_preset_round_trips_through_a_bundle(tmp_path: Path, preset: str) -> None:
    net = build_unet(preset).eval()
    bundle = load_bundle(save_bundle(net, {"normalisation": {"method": "zscore"}}, tmp_path))
    assert type(bundle.model) is type(net) and bundle.config == net.config
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        expected = net.probability(x)
        assert torch.equal(bundle.model.probability(x), expected)
        folded = fold_batch_norm(bundle.model).probability(x)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fold_batch_norm(net).modules())
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=0)
    assert bundle.normalisation == "zscore"


def test_bundles_without_kind_are_unets_and_unknown_kinds_are_refused(tmp_path: Path) -> None:
    path = save_bundle(build_unet(UNetConfig(filters=(2, 4), centre=4, preset=None)), {}, tmp_path)
    meta = json.loads((path / "model.json").read_text())
    del meta["architecture"]["kind"]
    (path / "model.json").write_text(json.dumps(meta))
    assert load_bundle(path).config.kind == "unet"
    meta["architecture"]["kind"] = "transformer"
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unknown architecture kind 'transformer'"):
        load_bundle(path)


# --- importing --------------------------------------------------------------------------------


def test_pynanofind_weights_import_and_match_keras(tmp_path: Path) -> None:
    source = tmp_path / "unet481632_AuCdSeDots_final.h5"
    model = keras_weights_file(source)
    bundle = import_model(source, "pynanofind", tmp_path / "bundle")
    assert bundle.metadata["normalisation"] == {"method": "pynanofind"}
    assert bundle.metadata["materials"] == ["Au", "CdSe"]
    assert bundle.metadata["source"]["format"] == "pynanofind"
    assert bundle.config.kind == "pynanofind" and bundle.pixel_nm is None
    image = frame(1)
    x = pynanofind_median_filter(image)[None, :, :, None].astype(np.float32)
    expected = np.asarray(model.predict(x, verbose=0))[0, :, :, 1]  # type: ignore[attr-defined]
    assert 0.01 < np.mean(expected >= 0.5) < 0.99  # the comparison sees both classes
    for backend in ("torch", "onnxruntime"):
        engine = load_engine(bundle, backend=backend, device="cpu", threads=1)
        ours = predict_probability(image, engine, bundle)
        assert np.abs(ours - expected).max() < 1e-3, backend


def test_hrtem_generalization_module_imports_and_matches_torch(tmp_path: Path) -> None:
    source = tmp_path / "UNet_5nmAu260kX450eUTC_fold0_seed962_model.h5"
    model = hrtem_file(source)
    bundle = import_model(source, "hrtem-generalization", tmp_path / "bundle")
    assert bundle.metadata["normalisation"] == {"method": "zscore"}
    assert bundle.pixel_nm == 0.026 and bundle.metadata["materials"] == ["Au"]
    assert bundle.config.kind == "residual" and bundle.config.centre == 64
    image = frame(2).astype(np.float64)
    x = torch.from_numpy(((image - image.mean()) / image.std()).astype(np.float32))[None, None]
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1)[0, 1].numpy()
    assert 0.01 < np.mean(expected >= 0.5) < 0.99
    for backend in ("torch", "onnxruntime"):
        engine = load_engine(bundle, backend=backend, device="cpu", threads=1)
        ours = predict_probability(image, engine, bundle, pixel_nm=0.026)
        assert np.abs(ours - expected).max() < 1e-3, backend


def test_a_saved_state_dict_imports_too(tmp_path: Path) -> None:
    model = hrtem_file(tmp_path / "whole.h5")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    whole = import_model(tmp_path / "whole.h5", "hrtem-generalization", tmp_path / "a")
    weights = import_model(tmp_path / "weights.pt", "hrtem-generalization", tmp_path / "b")
    assert whole.model_id == weights.model_id


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_a_pickle_with_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "UNet_5nmAu330kX423eUTC_fold0_seed962_model.h5"
    model = hrtem_file(evil)
    torch.save({"model": model.state_dict(), "payload": _RunsCode(marker)}, evil)
    with pytest.raises(ImportFailed, match=r"builtin_*\.exec, which is not on the allow-list"):
        import_model(evil, "hrtem-generalization", tmp_path / "bundle")
    assert not marker.exists() and not (tmp_path / "bundle").exists()
    # the file really carries code: an unrestricted unpickler runs it
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_a_plain_pickle_is_not_read_at_all(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "ran"
    path = tmp_path / "model.h5"
    path.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(ImportFailed, match="not a PyTorch archive"):
        import_model(path, "hrtem-generalization", tmp_path / "bundle")
    assert not marker.exists()


def test_other_fixed_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bilinear.h5"
    model = hrtem_file(path)
    for upsample in model.upsamples:
        upsample.mode = "bilinear"
    torch.save(model, path)
    with pytest.raises(ImportFailed, match="not nearest-neighbour 2x"):
        import_model(path, "hrtem-generalization", tmp_path / "bundle")


def test_unknown_classes_are_refused_without_import(tmp_path: Path) -> None:
    path = tmp_path / "net.h5"
    torch.save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU()), path)
    with pytest.raises(ImportFailed, match=r"torch\.nn\.modules\.activation\.GELU"):
        import_model(path, "hrtem-generalization", tmp_path / "bundle")


def test_wrong_format_gives_one_line_errors(tmp_path: Path) -> None:
    keras_file = tmp_path / "unet.h5"
    keras_weights_file(keras_file)
    hrtem_file(torch_file := tmp_path / "UNet_model.h5")
    with pytest.raises(ImportFailed, match="not a PyTorch archive") as caught:
        import_model(keras_file, "hrtem-generalization", tmp_path / "x")
    assert "\n" not in str(caught.value)
    assert "is it a --format pynanofind file?" in str(caught.value)
    with pytest.raises(ImportFailed, match=r"not an HDF5 file.*--format hrtem-generalization"):
        import_model(torch_file, "pynanofind", tmp_path / "x")


def test_cli_import_registers_and_prints_the_id(tmp_path: Path) -> None:
    source = tmp_path / "UNet_5nmCdSe330kX421eUTC_fold0_seed962_model.h5"
    hrtem_file(source)
    db = f"sqlite:///{tmp_path / 'temseg.db'}"
    result = CliRunner().invoke(
        app,
        [
            *("models", "import", str(source), "--format", "hrtem-generalization"),
            *("--out", str(tmp_path / "cdse"), "--db", db, "--name", "cdse-fold0"),
        ],
    )
    assert result.exit_code == 0, result.output
    model_id = result.output.strip()
    engine = connect(db)
    records = list_models(engine)
    engine.dispose()
    assert [(r.model_id, r.name) for r in records] == [(model_id, "cdse-fold0")]
    assert load_bundle(tmp_path / "cdse").metadata["materials"] == ["CdSe"]
    assert (tmp_path / "cdse" / "model.onnx").is_file()
    promoted = CliRunner().invoke(app, ["models", "promote", model_id, "--db", db])
    assert promoted.exit_code == 0, promoted.output

    bad = CliRunner().invoke(
        app,
        ["models", "import", str(source), "--format", "pynanofind", "--out", str(tmp_path / "x")],
    )
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert bad.output.count("\n") == 1 and "not an HDF5 file" in bad.output


def test_fine_tune_an_imported_model(tmp_path: Path) -> None:
    source = tmp_path / "unet481632_AuDots_final.h5"
    keras_weights_file(source)
    start = import_model(source, "pynanofind", tmp_path / "imported")
    data = write_dataset(tmp_path / "data", 4, pixel_nm=None)
    result = train(
        TrainConfig(
            data=[data],
            out=tmp_path / "tuned",
            init=tmp_path / "imported",
            epochs=1,
            patch=64,
            batch=2,
            device="cpu",
            patience=0,
        )
    )
    tuned = load_bundle(result.bundle_path)
    assert tuned.config == start.config and tuned.normalisation == "pynanofind"
    assert tuned.metadata["training"]["init"] == start.model_id
    assert tuned.model_id != start.model_id


def test_an_imported_model_is_promoted_and_calibrated(tmp_path: Path) -> None:
    source = tmp_path / "UNet_5nmAu330kX423eUTC_fold0_seed962_model.h5"
    hrtem_file(source)
    bundle = import_model(source, "hrtem-generalization", tmp_path / "bundle")
    db = f"sqlite:///{tmp_path / 'temseg.db'}"
    engine = connect(db)
    register_model(engine, bundle.model_id, "au", str(bundle.path), bundle.metadata)
    promote_model(engine, bundle.model_id)
    rng = np.random.default_rng(4)
    for i in range(2):
        write_frame(tmp_path / "data", f"au{i}", "Au", rng, pixel_nm=0.02)
    result = calibrate("Au", [tmp_path / "data"], db=db, out=tmp_path, backend="onnxruntime")
    assert result.model_id == bundle.model_id
    assert latest_calibration(engine, "Au", bundle.model_id) is not None
    engine.dispose()


def test_the_daemon_serves_an_imported_model(tmp_path: Path, acq: Path, db_path: Path,
                                             make_daemon: Any) -> None:  # fmt: skip
    source = tmp_path / "unet481632_AuDots_final.h5"
    keras_weights_file(source)
    bundle = import_model(source, "pynanofind", tmp_path / "bundle")
    daemon = make_daemon(model=str(bundle.path), material="Au")
    write_renamed(acq / "one.tif", tifffile_bytes(frame(5, 128)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = frame_rows(db_path) if db_path.exists() else []
        if rows:  # a row is written when the frame is done or failed
            break
        time.sleep(0.2)
    assert daemon.model is not None and daemon.model.model_id == bundle.model_id
    assert [(r["status"], r["model_id"]) for r in rows] == [("done", bundle.model_id)]


def tifffile_bytes(image: np.ndarray) -> bytes:
    import io

    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return buffer.getvalue()
