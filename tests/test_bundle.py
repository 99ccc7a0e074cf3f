"""Model bundles: save -> load round trip and every way a bundle can be broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from temseg.model.bundle import (
    METADATA_NAME,
    WEIGHTS_NAME,
    BundleError,
    load_bundle,
    save_bundle,
    torch_state_equal,
)
from temseg.model.unet import UNetConfig, build_unet, fold_batch_norm

TINY = UNetConfig(filters=(2, 4), centre=4, preset=None)
METADATA = {
    "pixel_nm": 0.1,
    "materials": ["Au", "CdSe"],
    "default_threshold": 0.4,
    "thresholds": {"Au": 0.55},
    "normalisation": {"method": "minmax"},
}


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    torch.manual_seed(3)
    return save_bundle(build_unet(TINY), METADATA, tmp_path / "bundle")


def test_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_unet(TINY)
    out = save_bundle(model, METADATA, tmp_path / "b")
    bundle = load_bundle(out)
    assert torch_state_equal(bundle.model, model)
    assert not bundle.model.training
    assert bundle.config == TINY
    assert bundle.path == out.resolve()
    assert bundle.pixel_nm == pytest.approx(0.1)
    assert bundle.normalisation == "minmax"
    assert bundle.threshold_for("Au") == pytest.approx(0.55)
    assert bundle.threshold_for("CdSe") == pytest.approx(0.4)
    assert bundle.threshold_for(None) == pytest.approx(0.4)
    assert bundle.metadata["materials"] == ["Au", "CdSe"]
    assert len(bundle.model_id) == 16
    assert bundle.onnx_path is None
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(bundle.model.eval()(x), model.eval()(x))


def test_model_id_depends_on_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_unet(TINY)
    first = load_bundle(save_bundle(model, METADATA, tmp_path / "a"))
    second = load_bundle(save_bundle(model, {"pixel_nm": 0.3}, tmp_path / "b"))
    assert first.model_id == second.model_id
    with torch.no_grad():
        model.head.weight.add_(1.0)
    third = load_bundle(save_bundle(model, METADATA, tmp_path / "c"))
    assert third.model_id != first.model_id


def test_load_from_metadata_file_path(bundle_dir: Path) -> None:
    assert load_bundle(bundle_dir / METADATA_NAME).model_id == load_bundle(bundle_dir).model_id


def test_defaults_filled_in(tmp_path: Path) -> None:
    bundle = load_bundle(save_bundle(build_unet(TINY), {}, tmp_path / "b"))
    assert bundle.normalisation == "max"
    assert bundle.threshold_for("Au") == 0.5
    assert bundle.pixel_nm is None


@pytest.mark.parametrize("missing", [METADATA_NAME, WEIGHTS_NAME])
def test_missing_file(bundle_dir: Path, missing: str) -> None:
    (bundle_dir / missing).unlink()
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(bundle_dir)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path / "nowhere")


def test_truncated_weights(bundle_dir: Path) -> None:
    weights = bundle_dir / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BundleError, match="weights do not load"):
        load_bundle(bundle_dir)


def test_flipped_byte_in_weights(bundle_dir: Path) -> None:
    weights = bundle_dir / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: still loads, but the id no longer matches
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the weights"):
        load_bundle(bundle_dir)


def test_wrong_architecture(bundle_dir: Path) -> None:
    meta_file = bundle_dir / METADATA_NAME
    meta = json.loads(meta_file.read_text())
    meta["architecture"]["filters"] = [4, 8]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="weights do not load"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("text", ["{broken", '{"format": "other/1"}', "[]"])
def test_bad_metadata(bundle_dir: Path, text: str) -> None:
    (bundle_dir / METADATA_NAME).write_text(text)
    with pytest.raises(BundleError, match=METADATA_NAME):
        load_bundle(bundle_dir)


def _net_with_batch_norm_statistics(config: UNetConfig, seed: int) -> torch.nn.Module:
    """An eval-mode U-Net whose batch norms do more than the identity."""
    torch.manual_seed(seed)
    net = build_unet(config).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net


@pytest.mark.parametrize("n_classes", [2, 3])
def test_probability_is_the_softmax_of_the_last_class(n_classes: int) -> None:
    net = _net_with_batch_norm_statistics(UNetConfig(n_classes=n_classes), n_classes)
    with torch.no_grad():
        x = torch.rand(2, 1, 64, 48)
        expected = torch.softmax(net(x), dim=1)[:, -1:]
        got = net.probability(x)
    assert got.shape == (2, 1, 64, 48)
    assert torch.allclose(got, expected, atol=1e-6)


def test_folded_batch_norm_computes_the_same_logits() -> None:
    net = _net_with_batch_norm_statistics(UNetConfig(), 5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batch_norm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 18
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = torch.rand(2, 1, 64, 48)
    with torch.no_grad():
        expected, got = net(x), folded(x)
    assert expected.std() > 0.01  # the comparison is not between constants
    assert torch.allclose(got, expected, atol=1e-5)
