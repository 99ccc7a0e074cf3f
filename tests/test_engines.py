"""Inference engines give the same masks as PyTorch fp32 on the CPU.

Two models: a paper-size U-Net trained here for a few seconds on bright discs
in noise (a random network sits at probability ~0.5 everywhere, where any
rounding flips the mask), run on disc frames; and the bundled model, run on
simulated HRTEM frames (the frames it was trained for). CUDA and TensorRT
tests are marked gpu and skip without a CUDA device.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from temseg.engine import (
    CPU_DEFAULT_BACKEND,
    EngineError,
    choose_backend,
    input_allocator,
    load_engine,
    tensorrt_importable,
    warmup,
)
from temseg.engine.base import Engine, resolve_device, resolve_threads
from temseg.engine.onnx_engine import select_providers, session_options
from temseg.engine.torch_engine import TorchEngine, engine_name
from temseg.frames import normalise
from temseg.model.bundle import (
    ModelBundle,
    load_bundle,
    save_bundle,
    torch_state_equal,
)
from temseg.model.unet import UNet, build_unet
from temseg.segment import binarize
from temseg.synth import simulate_frame

THRESHOLD = 0.5
SHAPES = [(2, 1, 128, 128), (1, 1, 96, 160)]
has_cuda = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not has_cuda, reason="needs a CUDA device")


def blob_frames(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Float32 frames (N, 1, H, W) of 1-4 bright discs on noise, and their uint8 masks (N, H, W)."""
    n, _, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    frames = np.empty(shape, dtype=np.float32)
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n):
        disc = np.zeros((h, w), dtype=bool)
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.uniform(8, h - 8), rng.uniform(8, w - 8)
            radius = rng.uniform(4, min(h, w) / 6)
            disc |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        frames[i, 0] = 0.3 + 0.4 * disc + rng.normal(0.0, 0.08, (h, w))
        masks[i] = disc
    return frames, masks


def train_tiny_unet(seed: int = 0, steps: int = 60) -> UNet:
    """Paper-size U-Net fitted to :func:`blob_frames` (a few seconds on one core).

    One thread: on a busy shared machine, more threads make these tiny
    convolutions much slower, not faster.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_unet("groschner2021")
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            frames, masks = blob_frames(rng, (8, 1, 64, 64))
            logits = net(torch.from_numpy(frames))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(masks).long())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """CPU engines set PyTorch's process-wide thread count; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle(model=train_tiny_unet(), metadata={"default_threshold": THRESHOLD})


@pytest.fixture(scope="module")
def hrtem() -> tuple[ModelBundle, list[np.ndarray], list[np.ndarray]]:
    """The bundled model, two simulated 256 px HRTEM batches and its fp32 CPU probabilities."""
    bundled = load_bundle(None)
    frames = []
    for material, seed in (("Au", 11), ("CdSe", 12)):
        image = simulate_frame(material, 256, seed).image
        frames.append(normalise(image, bundled.normalisation)[None, None])
    engine = TorchEngine(bundled, threads=1)
    try:
        return bundled, frames, [engine.predict(x) for x in frames]
    finally:
        engine.close()


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [blob_frames(rng, shape)[0] for shape in SHAPES]


@pytest.fixture(scope="module")
def reference(bundle: ModelBundle, frames: list[np.ndarray]) -> list[np.ndarray]:
    engine = TorchEngine(bundle, threads=1)
    try:
        return [engine.predict(x) for x in frames]
    finally:
        engine.close()


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels whose masks at :data:`THRESHOLD` agree."""
    return float((binarize(a, THRESHOLD) == binarize(b, THRESHOLD)).mean())


def assert_same_masks(
    engine: Engine, frames: list[np.ndarray], reference: list[np.ndarray], atol: float | None
) -> None:
    for x, want in zip(frames, reference, strict=True):
        got = engine.predict(x)
        assert got.dtype == np.float32
        assert got.shape == (x.shape[0], x.shape[2], x.shape[3])
        assert np.isfinite(got).all() and got.min() >= 0.0 and got.max() <= 1.0
        assert agreement(got, want) >= 0.999
        if atol is not None:
            assert np.abs(got - want).max() < atol


def test_reference_model_segments_the_frames(bundle: ModelBundle) -> None:
    x, truth = blob_frames(np.random.default_rng(3), (2, 1, 128, 128))
    probability = TorchEngine(bundle, threads=1).predict(x)
    assert (binarize(probability, THRESHOLD) == truth).mean() > 0.97
    # Few pixels sit near the threshold, so masks measure the engines, not rounding luck.
    assert (np.abs(probability - THRESHOLD) < 1e-2).mean() < 1e-3


def test_onnxruntime_cpu_matches_torch_fp32(
    bundle: ModelBundle, frames: list[np.ndarray], reference: list[np.ndarray], tmp_path: Path
) -> None:
    engine = load_engine(bundle, "onnxruntime", "cpu", threads=1, cache_dir=tmp_path)
    try:
        assert (engine.backend, engine.name) == ("onnxruntime", "onnxruntime-cpu")
        assert (engine.device, engine.precision, engine.compiled, engine.batches) == (
            "cpu",
            "fp32",
            False,
            False,  # on a CPU, one frame per call
        )
        assert isinstance(engine, Engine)
        assert_same_masks(engine, frames, reference, atol=1e-4)
    finally:
        engine.close()


def test_onnxruntime_cpu_matches_torch_fp32_on_hrtem_frames(
    hrtem: tuple[ModelBundle, list[np.ndarray], list[np.ndarray]], tmp_path: Path
) -> None:
    bundled, frames, reference = hrtem
    assert any(binarize(p, THRESHOLD).any() for p in reference)  # particles were found
    engine = load_engine(bundled, "onnxruntime", "cpu", threads=1, cache_dir=tmp_path)
    try:
        assert_same_masks(engine, frames, reference, atol=1e-4)
    finally:
        engine.close()


def test_torch_cpu_engine_is_fp32_with_the_requested_threads(
    bundle: ModelBundle, frames: list[np.ndarray], reference: list[np.ndarray]
) -> None:
    before = torch.get_num_threads()
    try:
        engine = load_engine(bundle, "torch", "cpu", threads=1)
        assert torch.get_num_threads() == 1
        assert (engine.backend, engine.name) == ("torch", "torch-cpu-fp32")
        assert (engine.device, engine.precision, engine.compiled, engine.batches) == (
            "cpu",
            "fp32",
            False,
            False,
        )
        assert_same_masks(engine, frames, reference, atol=1e-6)
    finally:
        torch.set_num_threads(before)


def test_engines_leave_the_bundle_network_untouched(bundle: ModelBundle, tmp_path: Path) -> None:
    before = build_unet(bundle.config)
    before.load_state_dict(bundle.model.state_dict())
    for backend in ("torch", "onnxruntime"):
        load_engine(bundle, backend, "cpu", threads=1, cache_dir=tmp_path).close()
    assert torch_state_equal(bundle.model, before)
    assert all(
        p.device.type == "cpu" and p.dtype == torch.float32 for p in bundle.model.parameters()
    )


def test_onnxruntime_exports_into_the_cache_not_the_bundle(
    bundle: ModelBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle_dir = save_bundle(bundle.model, {}, tmp_path / "bundle")
    saved = load_bundle(bundle_dir)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    engine = load_engine(saved, "onnxruntime", "cpu", threads=1)
    assert engine.onnx_path.parent == tmp_path / "xdg" / "temseg" / "engines"  # type: ignore[attr-defined]
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["model.json", "model.safetensors"]
    engine.close()


def test_onnxruntime_session_options() -> None:
    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_ALL")
    assert session_options(0).intra_op_num_threads == resolve_threads(0) >= 1


def test_onnxruntime_providers() -> None:
    assert select_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    assert select_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == (
        "CUDAExecutionProvider"
    )
    with pytest.raises(EngineError, match="onnxruntime-gpu"):
        select_providers("cuda", ["CPUExecutionProvider"])


def test_auto_selection_is_deterministic() -> None:
    assert choose_backend("cuda", tensorrt_available=True) == "tensorrt"
    assert choose_backend("cuda:1", tensorrt_available=False) == "torch"
    assert choose_backend("cpu", tensorrt_available=True) == CPU_DEFAULT_BACKEND
    assert CPU_DEFAULT_BACKEND in ("torch", "onnxruntime")


@pytest.mark.skipif(has_cuda, reason="checks the CPU-only choice")
def test_auto_on_a_cpu_machine_uses_the_cpu_default(
    bundle: ModelBundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert resolve_device("auto") == "cpu"
    with caplog.at_level(logging.WARNING):
        engine = load_engine(bundle, threads=1, compile=True, cache_dir=tmp_path)
    assert engine.backend == CPU_DEFAULT_BACKEND
    assert "torch.compile is only used on CUDA" in caplog.text
    engine.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "tflite"}, "unknown backend"),
        ({"backend": "torch", "device": "tpu"}, "unknown device"),
        ({"backend": "torch", "device": "cpu", "precision": "fp16"}, "needs a CUDA device"),
        ({"backend": "torch", "device": "cpu", "precision": "bf16"}, "unknown precision"),
        ({"backend": "torch", "device": "cpu", "compile": True}, "CUDA only"),
        ({"backend": "onnxruntime", "device": "cpu", "precision": "fp16"}, "fp32 only"),
        ({"backend": "torch", "threads": -1}, "threads must be >= 0"),
    ],
)
def test_bad_options_raise_engine_error(
    bundle: ModelBundle, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(EngineError, match=message):
        load_engine(bundle, **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(has_cuda, reason="checks the message on a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_refused(bundle: ModelBundle) -> None:
    with pytest.raises(EngineError, match="no CUDA device"):
        load_engine(bundle, "torch", "cuda")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_bad_batches_and_closed_engines_raise(
    bundle: ModelBundle, backend: str, tmp_path: Path
) -> None:
    engine = load_engine(bundle, backend, "cpu", threads=1, cache_dir=tmp_path)
    for bad in (np.zeros((64, 64), np.float32), np.zeros((1, 2, 64, 64), np.float32)):
        with pytest.raises(EngineError, match=r"\(N, 1, H, W\)"):
            engine.predict(bad)
    warmup(engine, [(1, 1, 32, 32), (2, 1, 32, 64)])
    engine.close()
    if backend == "torch":
        with pytest.raises(EngineError, match="closed"):
            engine.predict(np.zeros((1, 1, 32, 32), np.float32))


def test_engine_names() -> None:
    assert engine_name("cuda", "fp16", True) == "torch-cuda-fp16-compiled"
    assert engine_name("cpu", "fp32", False) == "torch-cpu-fp32"


def test_cpu_engines_take_their_input_in_ordinary_memory(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    for backend in ("torch", "onnxruntime"):
        engine = load_engine(bundle, backend, "cpu", cache_dir=tmp_path)
        try:
            assert input_allocator(engine) is None  # page-locking would need CUDA
        finally:
            engine.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
def test_pinned_memory_falls_back_to_ordinary_memory_without_cuda(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from temseg.engine.cuda_io import pinned_empty

    with caplog.at_level(logging.WARNING, logger="temseg.engine.cuda_io"):
        arrays = [pinned_empty((3, 5)) for _ in range(2)]
    assert all(a.shape == (3, 5) and a.dtype == np.float32 for a in arrays)
    arrays[0][...] = 1.0  # writable, ordinary memory
    assert caplog.text.count("page-locked host memory unavailable") <= 1


# --- CUDA (marked gpu) ---


@pytest.mark.parametrize(
    ("compile_mode", "name"),
    [
        (None, "torch-cuda-fp16"),
        ("reduce-overhead", "torch-cuda-fp16-compiled"),
        ("max-autotune-no-cudagraphs", "torch-cuda-fp16-compiled"),
    ],
)
@pytest.mark.gpu
@requires_cuda
def test_torch_cuda_fp16_channels_last_agrees_with_fp32(
    bundle: ModelBundle,
    frames: list[np.ndarray],
    reference: list[np.ndarray],
    compile_mode: str | None,
    name: str,
) -> None:
    engine = TorchEngine(
        bundle,
        device="cuda",
        compile=compile_mode is not None,
        compile_mode=compile_mode or "max-autotune-no-cudagraphs",
    )
    try:
        assert engine.name == name and engine.precision == "fp16"
        assert engine.device.startswith("cuda") and engine.compiled is (compile_mode is not None)
        assert engine.batches is (compile_mode is None)  # compiled: one frame per call
        model = engine._model
        assert model is not None
        weight = next(p for p in model.parameters() if p.dim() == 4)
        assert weight.dtype == torch.float16
        assert weight.is_contiguous(memory_format=torch.channels_last)
        engine.warmup([x.shape for x in frames])
        assert_same_masks(engine, frames, reference, atol=2e-2)
        # Alternating shapes after warm-up still give the same results.
        again = [engine.predict(x) for x in reversed(frames)]
        for a, b in zip(reversed(again), reference, strict=True):
            assert agreement(a, b) >= 0.999
    finally:
        engine.close()


@pytest.mark.gpu
@requires_cuda
def test_torch_cuda_reads_pinned_input_and_returns_results_later_calls_leave_alone(
    bundle: ModelBundle, frames: list[np.ndarray], reference: list[np.ndarray]
) -> None:
    from temseg.engine.cuda_io import pinned_empty

    engine = TorchEngine(bundle, device="cuda")
    try:
        assert input_allocator(engine) is pinned_empty
        results = []
        for x in frames:
            staged = pinned_empty(x.shape)
            staged[...] = x
            results.append(engine.predict(staged))
            assert torch.from_numpy(results[-1]).is_pinned()
        kept = [r.copy() for r in results]
        for x in frames * 3:  # ordinary memory, staged by the engine; blocks are reused
            engine.predict(x)
        for result, copy, ref in zip(results, kept, reference, strict=True):
            np.testing.assert_array_equal(result, copy)
            assert agreement(result, ref) >= 0.999
    finally:
        engine.close()


@pytest.mark.gpu
@requires_cuda
def test_torch_cuda_fp16_bundled_model_agrees_on_hrtem_frames(
    hrtem: tuple[ModelBundle, list[np.ndarray], list[np.ndarray]],
) -> None:
    bundled, frames, reference = hrtem
    engine = TorchEngine(bundled, device="cuda")
    try:
        assert_same_masks(engine, frames, reference, atol=None)
    finally:
        engine.close()


@pytest.mark.gpu
@requires_cuda
def test_torch_cuda_fp32_and_auto_device(
    bundle: ModelBundle, frames: list[np.ndarray], reference: list[np.ndarray]
) -> None:
    engine = load_engine(bundle, "torch", "auto", precision="fp32")
    try:
        assert engine.name == "torch-cuda-fp32"
        assert engine.device.startswith("cuda") and engine.precision == "fp32"
        assert engine.batches and not engine.compiled
        assert_same_masks(engine, frames, reference, atol=1e-2)  # convolutions may use TF32
    finally:
        engine.close()


@pytest.mark.gpu
@requires_cuda
def test_onnxruntime_cuda_if_installed(
    bundle: ModelBundle, frames: list[np.ndarray], reference: list[np.ndarray], tmp_path: Path
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    engine = load_engine(bundle, "onnxruntime", "cuda", cache_dir=tmp_path)
    try:
        assert engine.name == "onnxruntime-cuda"
        assert engine.device == "cuda" and engine.batches and engine.precision == "fp32"
        assert_same_masks(engine, frames, reference, atol=1e-2)
    finally:
        engine.close()


@pytest.mark.gpu
@pytest.mark.skipif(not (has_cuda and tensorrt_importable()), reason="needs CUDA and TensorRT")
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_engine_builds_caches_and_agrees(
    bundle: ModelBundle,
    frames: list[np.ndarray],
    reference: list[np.ndarray],
    tmp_path: Path,
    precision: str,
) -> None:
    from temseg.engine.tensorrt_engine import TensorRTEngine, build_engine

    plan, built = build_engine(
        bundle, max_size=256, batch=2, precision=precision, cache_dir=tmp_path
    )
    assert built and plan.is_file()
    engine = TensorRTEngine(bundle, max_size=256, batch=2, precision=precision, cache_dir=tmp_path)
    try:
        assert engine.name == f"tensorrt-{precision}" and engine.plan_path == plan
        assert engine.device.startswith("cuda") and engine.precision == precision
        assert engine.batches and not engine.compiled
        assert_same_masks(engine, frames, reference, atol=2e-2)
        with pytest.raises(EngineError, match="temseg compile"):
            engine.predict(np.zeros((1, 1, 512, 512), np.float32))
    finally:
        engine.close()
    assert build_engine(bundle, max_size=256, batch=2, precision=precision, cache_dir=tmp_path) == (
        plan,
        False,
    )
