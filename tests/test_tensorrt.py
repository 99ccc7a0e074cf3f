"""TensorRT backend: the parts that need neither TensorRT nor a GPU, and the missing-library path.

A real build runs in tests/test_engines.py (marked gpu) where TensorRT is installed.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from temseg.cli import app
from temseg.engine import EngineError, load_engine, tensorrt_importable
from temseg.engine.tensorrt_engine import (
    ProfileShapes,
    build_setup,
    check_in_profile,
    engine_cache_key,
    import_tensorrt,
    load_or_build,
    plan_engine,
    profile_shapes,
    timing_cache_name,
)
from temseg.model.bundle import ModelBundle
from temseg.model.onnx_export import onnx_matches
from temseg.model.unet import build_unet

needs_no_tensorrt = pytest.mark.skipif(
    tensorrt_importable(), reason="TensorRT is installed; this checks its absence"
)

KEY_ARGS = {
    "onnx_sha256": "a" * 64,
    "trt_version": "10.7.0.23",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": (9, 0),
    "profile": profile_shapes(4096, 4),
    "precision": "fp16",
}
KEY_CHANGES = {
    "onnx_sha256": "b" * 64,
    "trt_version": "11.4.0.106",
    "gpu_name": "NVIDIA A100-SXM4-40GB",
    "compute_capability": (8, 0),
    "profile": profile_shapes(2048, 4),
    "precision": "fp32",
}


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(model=build_unet("groschner2021").eval(), metadata={})


def test_cache_key_is_stable_hex() -> None:
    key = engine_cache_key(**KEY_ARGS)  # type: ignore[arg-type]
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert engine_cache_key(**dict(KEY_ARGS)) == key  # type: ignore[arg-type]


@pytest.mark.parametrize("component", sorted(KEY_CHANGES))
def test_cache_key_changes_with_each_component(component: str) -> None:
    changed = dict(KEY_ARGS, **{component: KEY_CHANGES[component]})
    assert engine_cache_key(**changed) != engine_cache_key(**KEY_ARGS)  # type: ignore[arg-type]


def test_cache_key_changes_with_batch_and_opt_size() -> None:
    keys = {
        engine_cache_key(**dict(KEY_ARGS, profile=p))  # type: ignore[arg-type]
        for p in (
            profile_shapes(4096, 4),
            profile_shapes(4096, 1),
            profile_shapes(4096, 4, opt_size=1024),
        )
    }
    assert len(keys) == 3


@given(
    max_size=st.integers(1, 20000),
    batch=st.integers(1, 16),
    opt_size=st.integers(1, 8192),
    multiple=st.sampled_from([16, 32, 64]),
)
def test_profile_shapes_are_multiples_and_cover_max(
    max_size: int, batch: int, opt_size: int, multiple: int
) -> None:
    profile = profile_shapes(max_size, batch, multiple=multiple, opt_size=opt_size)
    for shape in (profile.min, profile.opt, profile.max):
        assert shape[1] == 1
        assert shape[2] % multiple == 0 and shape[3] % multiple == 0
        assert all(lo <= hi for lo, hi in zip(profile.min, shape, strict=True))
        assert all(s <= hi for s, hi in zip(shape, profile.max, strict=True))
    assert profile.max[0] == batch and profile.min[0] == 1
    assert max_size <= profile.max[2] < max_size + multiple
    assert profile.covers((batch, 1, profile.max[2], profile.max[3]))
    assert profile.covers((1, 1, multiple, multiple))


def test_profile_examples() -> None:
    assert profile_shapes(4096, 4) == ProfileShapes(
        min=(1, 1, 16, 16), opt=(1, 1, 4096, 4096), max=(4, 1, 4096, 4096)
    )  # tuned for whole frames of the largest size
    assert profile_shapes(4096, 4, opt_size=2048).opt == (1, 1, 2048, 2048)
    assert profile_shapes(1000, 1).max == (1, 1, 1008, 1008)
    assert profile_shapes(1000, 1).opt == (1, 1, 1008, 1008)  # opt capped at max
    with pytest.raises(EngineError):
        profile_shapes(0, 1)
    with pytest.raises(EngineError):
        profile_shapes(512, 0)


def test_shapes_outside_the_profile_are_refused_with_a_hint() -> None:
    profile = profile_shapes(512, 2)
    check_in_profile((2, 1, 512, 256), profile)
    for shape in [(3, 1, 64, 64), (1, 1, 528, 64), (1, 1, 64, 8), (1, 2, 64, 64)]:
        with pytest.raises(EngineError, match="temseg compile"):
            check_in_profile(shape, profile)


def test_build_setup_tensorrt_10_uses_builder_fp16_on_fp32_onnx() -> None:
    setup = build_setup("10.7.0.23", "fp16")
    assert (setup.trt_major, setup.onnx_fp16, setup.builder_fp16_flag) == (10, False, True)
    assert setup.explicit_batch_flag
    fp32 = build_setup("10.13.3", "fp32")
    assert not fp32.onnx_fp16 and not fp32.builder_fp16_flag


def test_build_setup_tensorrt_11_is_strongly_typed_from_fp16_onnx() -> None:
    setup = build_setup("11.4.0.106", "fp16")
    assert (setup.trt_major, setup.onnx_fp16, setup.builder_fp16_flag) == (11, True, False)
    assert not setup.explicit_batch_flag
    fp32 = build_setup("11.4.0.106", "fp32")
    assert not fp32.onnx_fp16 and not fp32.builder_fp16_flag


@pytest.mark.parametrize(
    ("version", "precision", "message"),
    [
        ("8.6.1", "fp16", "too old"),
        ("10.7.0", "int8", "unknown precision"),
        ("dev", "fp16", "cannot read"),
    ],
)
def test_build_setup_errors(version: str, precision: str, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        build_setup(version, precision)


def test_timing_cache_name_is_a_safe_file_name() -> None:
    name = timing_cache_name("10.7.0.23", "NVIDIA GeForce RTX 4090 / D", (8, 9))
    assert name == "timing-trt10.7.0.23-nvidia-geforce-rtx-4090-d-sm89.cache"
    assert "/" not in name and " " not in name


def _deserialize(data: bytes) -> str | None:
    """Stand-in for ``Runtime.deserialize_cuda_engine``: None for a plan it cannot use."""
    return data.decode() if data.startswith(b"PLAN:v2") else None


def test_load_or_build_builds_and_stores_when_no_plan(tmp_path: Path) -> None:
    plan = tmp_path / "sub" / "key.plan"
    builds: list[int] = []

    def build() -> bytes:
        builds.append(1)
        return b"PLAN:v2 engine"

    engine, built = load_or_build(plan, _deserialize, build)
    assert (engine, built, len(builds)) == ("PLAN:v2 engine", True, 1)
    assert plan.read_bytes() == b"PLAN:v2 engine"
    engine, built = load_or_build(plan, _deserialize, build)
    assert (engine, built, len(builds)) == ("PLAN:v2 engine", False, 1)  # cache hit


def test_load_or_build_rebuilds_when_deserialisation_returns_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = tmp_path / "key.plan"
    plan.write_bytes(b"PLAN:v1 built by an older TensorRT")
    with caplog.at_level(logging.WARNING):
        engine, built = load_or_build(plan, _deserialize, lambda: b"PLAN:v2 fresh")
    assert (engine, built) == ("PLAN:v2 fresh", True)
    assert plan.read_bytes() == b"PLAN:v2 fresh"
    assert "rebuilding" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["key.plan"]  # no temporary files left


def test_load_or_build_fails_clearly_when_a_fresh_build_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="cannot be deserialised"):
        load_or_build(tmp_path / "key.plan", _deserialize, lambda: b"garbage")


@pytest.mark.parametrize(("version", "onnx_fp16"), [("11.4.0.106", True), ("10.7.0.23", False)])
def test_plan_engine_exports_onnx_at_the_version_dependent_precision(
    bundle: ModelBundle, tmp_path: Path, version: str, onnx_fp16: bool
) -> None:
    common = {
        "gpu_name": "NVIDIA H100",
        "compute_capability": (9, 0),
        "max_size": 1000,
        "batch": 2,
        "cache_dir": tmp_path,
    }
    plan = plan_engine(version, bundle, **common)  # type: ignore[arg-type]
    assert onnx_matches(plan.onnx_path, bundle, fp16=onnx_fp16)
    assert plan.onnx_path.parent == tmp_path
    assert plan.plan_path.parent == tmp_path and re.fullmatch(
        r"[0-9a-f]{64}\.plan", plan.plan_path.name
    )
    assert plan.profile.max == (2, 1, 1008, 1008)
    assert plan.timing_cache_path.parent == tmp_path
    again = plan_engine(version, bundle, **common)  # type: ignore[arg-type]
    assert again == plan
    other_gpu = dict(common, gpu_name="NVIDIA L4", compute_capability=(8, 9))
    assert plan_engine(version, bundle, **other_gpu).plan_path != plan.plan_path  # type: ignore[arg-type]


@needs_no_tensorrt
def test_missing_tensorrt_raises_with_install_hint(bundle: ModelBundle) -> None:
    with pytest.raises(EngineError, match=re.escape("pip install 'temseg[tensorrt]'")):
        import_tensorrt()
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        load_engine(bundle, backend="tensorrt")


@needs_no_tensorrt
def test_compile_command_without_tensorrt_exits_2_with_the_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compile", "--max-size", "1024", "--cache", str(tmp_path)])
    assert result.exit_code == 2
    assert "TensorRT is not installed" in result.output
    assert "pip install 'temseg[tensorrt]'" in result.output
    assert list(tmp_path.iterdir()) == []
