"""Frame -> probability with a real (tiny) U-Net through the torch engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from temseg.engine import Engine, load_engine
from temseg.frames import Frame
from temseg.inference import (
    FrameResult,
    predict_batch,
    predict_probability,
    prepare_input,
    segment_frame,
)
from temseg.model.bundle import ModelBundle, load_bundle, save_bundle
from temseg.model.unet import UNetConfig, build_unet

TINY = UNetConfig(filters=(2, 4), centre=4, preset=None)  # size multiple 4 px


def contrasty_unet(config: UNetConfig = TINY, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised U-Net whose probabilities spread over [0, 1]."""
    torch.manual_seed(seed)
    model = build_unet(config)
    with torch.no_grad():
        model.head.weight.mul_(300.0)
    return model


def make_bundle(tmp_path: Path, **metadata: object) -> ModelBundle:
    model = contrasty_unet()
    return load_bundle(save_bundle(model, dict(metadata), tmp_path / "bundle"))  # type: ignore[arg-type]


class RecordingEngine:
    """Runs a real engine and records every batch shape it is given."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.name = inner.name
        self.device = inner.device
        self.precision = inner.precision
        self.compiled = inner.compiled
        self.batches = inner.batches
        self.shapes: list[tuple[int, ...]] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        return self.inner.predict(batch)

    def close(self) -> None:
        self.inner.close()


def frame_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    lattice = 1000 + 400 * np.sin(x / 2.3) * np.sin(y / 3.1)
    return (lattice + rng.normal(0, 50, shape)).clip(0).astype(np.uint16)


@pytest.fixture
def bundle(tmp_path: Path) -> ModelBundle:
    return make_bundle(tmp_path)


@pytest.fixture
def engine(bundle: ModelBundle) -> RecordingEngine:
    return RecordingEngine(load_engine(bundle, backend="torch", threads=1))


def test_probability_on_original_grid(bundle: ModelBundle, engine: RecordingEngine) -> None:
    image = frame_image((70, 93))
    probability = predict_probability(image, engine, bundle)
    assert probability.shape == (70, 93)
    assert probability.dtype == np.float32
    assert 0.0 <= probability.min() and probability.max() <= 1.0
    assert probability.std() > 0.05  # the network is not a constant
    assert engine.shapes == [(1, 1, 72, 96)]  # padded to the size multiple, one call


def test_tiled_equals_whole_frame(bundle: ModelBundle, engine: RecordingEngine) -> None:
    image = frame_image((200, 264), seed=1)
    whole = predict_probability(image, engine, bundle)
    assert engine.shapes == [(1, 1, 200, 264)]
    engine.shapes.clear()
    tiled = predict_probability(image, engine, bundle, tile=96, overlap=64)
    assert len(engine.shapes) > 4 and len(set(engine.shapes)) == 1
    assert max(engine.shapes[0][2:]) <= 96
    assert np.abs(tiled - whole).max() < 1e-4
    np.testing.assert_array_equal(tiled >= 0.5, whole >= 0.5)
    # without overlap the tile borders show: the comparison above is not vacuous
    seams = predict_probability(image, engine, bundle, tile=96, overlap=0)
    assert np.abs(seams - whole).max() > 1e-2


def test_large_frame_never_reaches_engine_whole(
    bundle: ModelBundle, engine: RecordingEngine
) -> None:
    probability = predict_probability(frame_image((300, 260)), engine, bundle, tile=64, overlap=16)
    assert probability.shape == (300, 260)
    assert max(max(s[2:]) for s in engine.shapes) == 64
    assert all(s[0] == 1 for s in engine.shapes)


def test_max_normalisation_makes_exposure_irrelevant(
    bundle: ModelBundle, engine: RecordingEngine
) -> None:
    image = frame_image((64, 64))
    assert bundle.normalisation == "max"
    bright = predict_probability(image.astype(np.float64) * 7.5, engine, bundle)
    np.testing.assert_allclose(predict_probability(image, engine, bundle), bright, atol=1e-5)


def test_resampled_to_model_pixel_size(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, pixel_nm=0.1)
    engine = RecordingEngine(load_engine(bundle, backend="torch", threads=1))
    image = frame_image((100, 120))
    fine = predict_probability(image, engine, bundle, pixel_nm=0.05)
    assert fine.shape == (100, 120)
    assert engine.shapes == [(1, 1, 52, 60)]  # 50 x 60 on the 0.1 nm grid, padded
    same = predict_probability(image, engine, bundle, pixel_nm=0.1)
    unknown = predict_probability(image, engine, bundle)
    assert engine.shapes[1:] == [(1, 1, 100, 120), (1, 1, 100, 120)]
    np.testing.assert_array_equal(same, unknown)


def test_predict_batch_matches_single_frames(bundle: ModelBundle, engine: RecordingEngine) -> None:
    images = [frame_image((60, 62), seed=s) for s in range(3)] + [frame_image((40, 40), seed=9)]
    singles = [predict_probability(im, engine, bundle) for im in images]
    engine.shapes.clear()
    batched = predict_batch(images, engine, bundle, pixel_nms=[None] * 4)
    assert sorted(engine.shapes) == [(1, 1, 40, 40), (3, 1, 60, 64)]
    for one, many in zip(singles, batched, strict=True):
        assert many.shape == one.shape and many.dtype == np.float32
        np.testing.assert_allclose(many, one, atol=1e-5)
    assert predict_batch([], engine, bundle, pixel_nms=[]) == []
    with pytest.raises(ValueError, match="pixel sizes"):
        predict_batch(images, engine, bundle, pixel_nms=[None])


def test_predict_batch_tiles_frames_larger_than_tile(
    bundle: ModelBundle, engine: RecordingEngine
) -> None:
    images = [frame_image((96, 96), seed=s) for s in range(2)]
    batched = predict_batch(images, engine, bundle, pixel_nms=[None, None], tile=64, overlap=32)
    assert all(max(s[2:]) == 64 for s in engine.shapes)
    assert [b.shape for b in batched] == [(96, 96), (96, 96)]


def test_segment_frame(bundle: ModelBundle, engine: RecordingEngine) -> None:
    frame = Frame(
        image=frame_image((80, 72)), pixel_nm=0.2, metadata={"material": "Au"}, read_ms=1.5
    )
    result = segment_frame(frame, engine, bundle, threshold=0.5)
    assert isinstance(result, FrameResult)
    assert (result.material, result.pixel_nm, result.threshold) == ("Au", 0.2, 0.5)
    np.testing.assert_array_equal(result.segmentation.mask, result.probability >= 0.5)
    assert result.segmentation.mask.dtype == np.uint8
    assert result.segmentation.n_particles > 0
    particle = result.segmentation.particles[0]
    assert particle.equiv_diameter_nm == pytest.approx(particle.equiv_diameter_px * 0.2)
    assert set(result.timing_ms) == {"read", "infer", "segment", "total"}
    assert result.timing_ms["read"] == 1.5
    timing = result.timing_ms
    assert timing["total"] == pytest.approx(timing["read"] + timing["infer"] + timing["segment"])
    assert min(timing.values()) > 0

    other = segment_frame(frame, engine, bundle, threshold=0.9, material="CdSe", min_area_px=5)
    assert other.material == "CdSe"
    assert all(p.area_px >= 5 for p in other.segmentation.particles)
    assert other.segmentation.mask.sum() <= result.segmentation.mask.sum()


def test_warm_up_runs_each_frame_shape_as_the_daemon_pads_it(
    bundle: ModelBundle, engine: RecordingEngine
) -> None:
    from temseg.daemon.models import warm_up

    multiple = bundle.config.size_multiple
    assert warm_up(engine, bundle, [(300, 260), (128, 128), (300, 260)]) > 0
    expected = {(1, 1, 128, 128)}
    expected.add((1, 1, -(-300 // multiple) * multiple, -(-260 // multiple) * multiple))
    assert sorted(engine.shapes) == sorted(expected)  # each shape once, nothing else
    engine.shapes.clear()
    assert warm_up(engine, bundle) > 0  # no shapes listed: one small frame
    side = -(-64 // multiple) * multiple
    assert engine.shapes == [(1, 1, side, side)]


def test_warm_up_gives_the_engine_the_tile_shapes_that_large_frames_give_it(
    bundle: ModelBundle, engine: RecordingEngine
) -> None:
    from temseg.daemon.models import warm_up
    from temseg.inference import prepare_input, run_inputs

    shape = (300, 260)
    warm_up(engine, bundle, [shape], tile=128, overlap=32)
    warmed = set(engine.shapes)
    engine.shapes.clear()
    run_inputs([prepare_input(frame_image(shape), bundle, None)], engine, tile=128, overlap=32)
    assert len(engine.shapes) > 1  # the frame was tiled
    assert set(engine.shapes) <= warmed
    assert all(max(s[2:]) <= 128 for s in warmed)


@pytest.mark.parametrize(
    ("shape", "pixel_nm"),
    [((96, 64), None), ((90, 70), None), ((96, 64), 0.1)],
    ids=["as is", "padded", "resampled"],
)
def test_prepare_input_fills_the_engines_own_memory(
    tmp_path: Path, shape: tuple[int, int], pixel_nm: float | None
) -> None:
    from temseg.inference import prepare_input

    bundle = make_bundle(tmp_path, pixel_nm=0.2)
    image = frame_image(shape)
    given: list[np.ndarray] = []

    def allocate(size: tuple[int, ...]) -> np.ndarray:
        given.append(np.full(size, np.nan, dtype=np.float32))
        return given[-1]

    plain = prepare_input(image, bundle, pixel_nm)
    filled = prepare_input(image, bundle, pixel_nm, allocate=allocate)
    assert len(given) == 1 and filled.padded is given[0]
    np.testing.assert_array_equal(filled.padded, plain.padded)
    assert (filled.grid_shape, filled.frame_shape) == (plain.grid_shape, plain.frame_shape)


def test_float16_copy_rounds_as_numpy_does_bit_for_bit() -> None:
    from temseg.inference import to_float16

    rng = np.random.default_rng(7)
    probability = rng.random((37, 53), dtype=np.float32)
    probability[0, :6] = [0.0, 1.0, 1e-8, 6e-8, 0.5 + 2**-12, 0.99951171875]  # ties, subnormals
    half = to_float16(probability)
    assert half.dtype == np.float16 and half.shape == probability.shape
    expected = probability.astype(np.float16)
    np.testing.assert_array_equal(half.view(np.uint16), expected.view(np.uint16))
    strided = to_float16(probability[:, ::2])  # not contiguous
    np.testing.assert_array_equal(strided, probability[:, ::2].astype(np.float16))


def test_non_square_pixels_resampled_per_axis(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, pixel_nm=0.1)
    x = prepare_input(frame_image((40, 60)), bundle, (0.2, 0.05))
    assert x.grid_shape == (80, 30) and x.frame_shape == (40, 60)


def test_frame_that_would_grow_past_the_limit_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, pixel_nm=0.05)
    with pytest.raises(ValueError, match=r"would make 51200 x 51200 px .*check the frame's pixel"):
        prepare_input(frame_image((128, 128)), bundle, 20.0)


def test_max_pixels_is_checked_on_the_model_grid_before_resampling() -> None:
    """A 64 x 64 frame claiming pixels 1,000 times larger than the model's would be
    upsampled to 64,000 x 64,000 pixels (16 GB of float32); it is refused at once."""
    import time

    from temseg.inference import GridTooLarge, prepare_input
    from temseg.model.bundle import load_bundle

    bundle = load_bundle(None)
    assert bundle.pixel_nm is not None
    image = np.ones((64, 64), np.uint16)
    start = time.perf_counter()
    with pytest.raises(GridTooLarge, match=r"would make 64000 x 64000 px \(above max_pixels"):
        prepare_input(image, bundle, bundle.pixel_nm * 1000, max_pixels=2**28)
    assert time.perf_counter() - start < 5
    same = prepare_input(image, bundle, bundle.pixel_nm, max_pixels=64 * 64)
    assert same.grid_shape == (64, 64)
