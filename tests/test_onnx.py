"""ONNX export of the probability graph: validity, dynamic axes, parity with PyTorch and ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from temseg.engine.cache import ensure_onnx
from temseg.model.bundle import ModelBundle, load_bundle, save_bundle, torch_state_equal
from temseg.model.onnx_export import (
    GRAPH_VERSION,
    INPUT_NAME,
    META_GRAPH,
    META_MODEL_ID,
    META_PRECISION,
    OUTPUT_NAME,
    export_onnx,
    model_fingerprint,
    onnx_matches,
    onnx_metadata,
)
from temseg.model.unet import ProbabilityModel, UNet, build_unet

SHAPES = [(1, 1, 64, 64), (1, 1, 48, 112), (2, 1, 64, 96), (3, 1, 32, 32)]


def _net(seed: int) -> UNet:
    torch.manual_seed(seed)
    net = build_unet("groschner2021")
    # Non-trivial batch-norm statistics, so that folding them into the convolutions matters.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            mean, var = module.running_mean, module.running_var
            assert mean is not None and var is not None
            mean.uniform_(-0.2, 0.2)
            var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def net() -> UNet:
    return _net(0)


@pytest.fixture(scope="module")
def fp32_onnx(net: UNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(net, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def fp16_onnx(net: UNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(net, tmp_path_factory.mktemp("onnx16") / "model-fp16.onnx", fp16=True)


def _torch_probability(net: UNet, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return ProbabilityModel(net)(torch.from_numpy(x)).numpy()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_is_valid_onnx_with_named_dynamic_io(fp32_onnx: Path) -> None:
    proto = onnx.load(str(fp32_onnx))
    onnx.checker.check_model(proto, full_check=True)
    (image,) = proto.graph.input
    (probability,) = proto.graph.output
    assert (image.name, probability.name) == (INPUT_NAME, OUTPUT_NAME)
    for value in (image, probability):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
        assert dims[1].dim_value == 1
    assert proto.opset_import[0].version == 17


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_onnxruntime_matches_torch_fp32(net: UNet, fp32_onnx: Path, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    (got,) = _session(fp32_onnx).run(None, {INPUT_NAME: x})
    want = _torch_probability(net, x)
    assert got.shape == want.shape == shape
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4


def test_fp16_export_passes_checker_and_runs_on_ort_cpu(net: UNet, fp16_onnx: Path) -> None:
    proto = onnx.load(str(fp16_onnx))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    weights = [init for init in proto.graph.initializer if init.dims]
    assert weights and all(init.data_type == onnx.TensorProto.FLOAT16 for init in weights)
    x = np.random.default_rng(2).random((2, 1, 64, 96), dtype=np.float32)
    (got,) = _session(fp16_onnx).run(None, {INPUT_NAME: x.astype(np.float16)})
    assert got.dtype == np.float16
    assert np.abs(got.astype(np.float32) - _torch_probability(net, x)).max() < 1e-2


def test_export_leaves_the_network_untouched(net: UNet, tmp_path: Path) -> None:
    before = _net(0)
    export_onnx(net, tmp_path / "a.onnx", fp16=True)
    assert torch_state_equal(net, before)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert not net.training


def test_static_export_has_fixed_shape(net: UNet, tmp_path: Path) -> None:
    path = export_onnx(net, tmp_path / "static.onnx", dynamic=False, shape=(1, 1, 32, 48))
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 32, 48]
    x = np.random.default_rng(3).random((1, 1, 32, 48), dtype=np.float32)
    (got,) = _session(path).run(None, {INPUT_NAME: x})
    assert np.abs(got - _torch_probability(net, x)).max() < 1e-4


def test_metadata_identifies_weights_and_precision(
    net: UNet, fp32_onnx: Path, fp16_onnx: Path, tmp_path: Path
) -> None:
    assert onnx_metadata(fp32_onnx) == {
        META_MODEL_ID: model_fingerprint(net),
        META_PRECISION: "fp32",
        META_GRAPH: GRAPH_VERSION,
    }
    assert onnx_matches(fp32_onnx, net)
    assert not onnx_matches(fp32_onnx, net, fp16=True)
    assert onnx_matches(fp16_onnx, net, fp16=True)
    assert not onnx_matches(fp32_onnx, _net(1))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all")
    assert not onnx_matches(corrupt, net)
    assert not onnx_matches(tmp_path / "missing.onnx", net)


def test_fingerprint_is_the_bundle_model_id(net: UNet, tmp_path: Path) -> None:
    bundle = load_bundle(save_bundle(net, {}, tmp_path / "bundle"))
    assert model_fingerprint(bundle) == bundle.model_id
    assert model_fingerprint(ModelBundle(model=net, metadata={})) == model_fingerprint(net)
    assert model_fingerprint(net) == model_fingerprint(_net(0))
    assert model_fingerprint(net) != model_fingerprint(_net(1))


def test_ensure_onnx_prefers_a_matching_bundled_file(net: UNet, tmp_path: Path) -> None:
    bundle_dir = save_bundle(net, {}, tmp_path / "bundle")
    bundle = load_bundle(bundle_dir)
    export_onnx(bundle, bundle_dir / "model.onnx")
    cache = tmp_path / "cache"
    assert ensure_onnx(bundle, cache_dir=cache) == bundle_dir / "model.onnx"
    assert not cache.exists()
    # fp16 is not bundled: exported into the cache, the bundle directory is not written.
    before = sorted(p.name for p in bundle_dir.iterdir())
    fp16 = ensure_onnx(bundle, fp16=True, cache_dir=cache)
    assert fp16.parent == cache and onnx_matches(fp16, bundle, fp16=True)
    assert sorted(p.name for p in bundle_dir.iterdir()) == before


def test_ensure_onnx_replaces_a_stale_bundled_file_via_the_cache(net: UNet, tmp_path: Path) -> None:
    bundle_dir = save_bundle(net, {}, tmp_path / "bundle")
    export_onnx(_net(1), bundle_dir / "model.onnx")  # other weights: stale
    stale = (bundle_dir / "model.onnx").read_bytes()
    bundle = load_bundle(bundle_dir)
    cache = tmp_path / "cache"
    path = ensure_onnx(bundle, cache_dir=cache)
    assert path.parent == cache and onnx_matches(path, bundle)
    assert (bundle_dir / "model.onnx").read_bytes() == stale
    mtime = path.stat().st_mtime_ns
    assert ensure_onnx(bundle, cache_dir=cache) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not exported again


def test_an_export_of_an_older_graph_is_replaced(net: UNet, tmp_path: Path) -> None:
    bundle_dir = save_bundle(net, {}, tmp_path / "bundle")
    path = export_onnx(net, bundle_dir / "model.onnx")
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(
        proto, {**onnx_metadata(path), META_GRAPH: str(int(GRAPH_VERSION) - 1)}
    )
    onnx.save(proto, str(path))
    bundle = load_bundle(bundle_dir)
    assert not onnx_matches(path, bundle)
    fresh = ensure_onnx(bundle, cache_dir=tmp_path / "cache")
    assert fresh.parent == tmp_path / "cache"
    assert onnx_metadata(fresh)[META_GRAPH] == GRAPH_VERSION
