"""Raw frame in, mask out on the engine's device: the CPU twin always, CUDA when there is one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from test_inference import contrasty_unet, frame_image

from temseg.daemon.models import ServedModel
from temseg.daemon.prepare import PrepareStage, on_device
from temseg.daemon.segment import SegmentStage
from temseg.daemon.work import FrameWork
from temseg.engine import device_frame, load_engine
from temseg.engine.device_frame import finishes_on_device, normalise_tensor
from temseg.engine.torch_engine import TorchEngine
from temseg.frames import Frame
from temseg.frames.normalise import normalise
from temseg.inference import prepare_input
from temseg.model.bundle import ModelBundle, load_bundle, save_bundle
from temseg.segment import binarize, measure_particles


def bundle_with(tmp_path: Path, method: str) -> ModelBundle:
    path = save_bundle(contrasty_unet(), {"normalisation": {"method": method}}, tmp_path / method)
    return load_bundle(path)


def host_masks(
    engine: TorchEngine, bundle: ModelBundle, images: list[np.ndarray], thresholds: list[float]
) -> list[np.ndarray]:
    """The daemon's host path: normalise and pad on the host, float map back, threshold."""
    masks = []
    for image, threshold in zip(images, thresholds, strict=True):
        x = prepare_input(image, bundle, None)
        probability = engine.predict(x.padded[None, None])[0]
        h, w = x.grid_shape
        masks.append(binarize(probability[:h, :w], threshold))
    return masks


def device_masks(
    engine: TorchEngine, bundle: ModelBundle, images: list[np.ndarray], thresholds: list[float]
) -> list[np.ndarray]:
    return engine.predict_masks(
        images, bundle.normalisation, bundle.config.size_multiple, thresholds
    )


@pytest.mark.parametrize("method", ["max", "minmax", "zscore"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_normalise_tensor_as_the_host_normalises(method: str, dtype: type) -> None:
    info = np.iinfo(dtype)
    image = np.random.default_rng(4).integers(info.min, info.max, (37, 52), endpoint=True)
    image = image.astype(dtype)
    got = normalise_tensor(torch.from_numpy(image), method).numpy()
    if method == "zscore":  # float64 sums in another order: a rounding apart at most
        np.testing.assert_allclose(got, normalise(image, method), rtol=0, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, normalise(image, method))
    constant = torch.full((5, 6), 9, dtype=torch.int16)
    np.testing.assert_array_equal(normalise_tensor(constant, method).numpy(), 0.0)


def test_uint16_counts_arrive_whole_on_the_device() -> None:
    counts = np.array([[0, 1, 32767], [32768, 50000, 65535]], dtype=np.uint16)
    uploaded = device_frame._upload(counts, torch.device("cpu"))
    np.testing.assert_array_equal(uploaded.numpy(), counts.astype(np.int64))


@pytest.mark.parametrize("method", ["max", "minmax"])
def test_cpu_twin_gives_the_host_paths_masks_bit_for_bit(tmp_path: Path, method: str) -> None:
    bundle = bundle_with(tmp_path, method)
    engine = load_engine(bundle, backend="torch", device="cpu", threads=1)
    assert isinstance(engine, TorchEngine) and not engine.masks_on_device  # CPU: a twin only
    # 50 x 61 px: reflected up to the size multiple (4 px) at the bottom and right.
    images = [frame_image((50, 61), seed=1), frame_image((50, 61), seed=2) * 30]  # past 32767
    thresholds = [0.5, 0.3]
    got = device_masks(engine, bundle, images, thresholds)
    expected = host_masks(engine, bundle, images, thresholds)
    for mask, want in zip(got, expected, strict=True):
        assert mask.dtype == np.uint8 and mask.shape == (50, 61)
        assert 0 < mask.sum() < mask.size  # the maps are not trivial
        np.testing.assert_array_equal(mask, want)


def test_cpu_twin_zscore_masks_agree_with_the_host_path(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "zscore")
    engine = load_engine(bundle, backend="torch", device="cpu", threads=1)
    images = [frame_image((48, 64), seed=3)]
    mask = device_masks(engine, bundle, images, [0.5])[0]
    want = host_masks(engine, bundle, images, [0.5])[0]
    assert np.mean(mask != want) <= 1e-3  # inputs a rounding apart: pixels at the threshold


def test_out_of_range_threshold_refused(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "max")
    engine = load_engine(bundle, backend="torch", device="cpu", threads=1)
    with pytest.raises(ValueError, match="threshold"):
        device_masks(engine, bundle, [frame_image((16, 16))], [1.5])


def test_which_frames_finish_on_device() -> None:
    counts = np.zeros((64, 64), np.uint16)
    assert finishes_on_device(counts, "max", (64, 64), 16)
    assert not finishes_on_device(counts.astype(np.float32), "max", (64, 64), 16)  # NaN possible
    assert not finishes_on_device(counts.astype(np.int32), "max", (64, 64), 16)  # not exact in f32
    assert not finishes_on_device(counts, "pynanofind", (64, 64), 16)  # outlier filter: host
    assert not finishes_on_device(counts, "max", (32, 32), 16)  # resampled to the model's grid
    assert not finishes_on_device(counts[:16], "max", (16, 64), 16)  # shorter than its padding


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["max", "zscore"])
def test_cuda_masks_match_the_host_path_on_the_same_engine(tmp_path: Path, method: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    bundle = bundle_with(tmp_path, method)
    engine = load_engine(bundle, backend="torch", device="cuda")
    assert isinstance(engine, TorchEngine) and engine.masks_on_device
    images = [frame_image((250, 301), seed=5), frame_image((250, 301), seed=6)]
    got = device_masks(engine, bundle, images, [0.5, 0.4])
    expected = host_masks(engine, bundle, images, [0.5, 0.4])
    for mask, want in zip(got, expected, strict=True):
        assert mask.dtype == np.uint8 and mask.shape == (250, 301)
        assert 0 < mask.sum() < mask.size
        assert np.mean(mask != want) <= 1e-3  # fp16: pixels at the threshold at most


def test_daemon_stages_hand_raw_frames_to_a_mask_making_engine(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "max")  # no pixel size: frames are never resampled
    engine = load_engine(bundle, backend="torch", device="cpu", threads=1)
    assert isinstance(engine, TorchEngine)
    model = ServedModel(bundle, engine, "bundled", None)
    frame = Frame(image=frame_image((64, 78), seed=8), pixel_nm=0.2)
    assert not on_device(frame, model, tile=2048)  # a CPU engine returns float maps
    engine.masks_on_device = True  # the CPU twin in a CUDA engine's place
    assert on_device(frame, model, tile=2048)
    assert not on_device(frame, model, tile=32)  # tiled: the host path
    assert not on_device(Frame(image=np.full((64, 78), 5, np.uint16)), model, tile=2048)  # blank

    def work() -> FrameWork:
        return FrameWork(Path("f.tif"), "f.tif", datetime.now(UTC), 0.0, frame=frame)

    raw, host = work(), work()
    PrepareStage(lambda: model, masks_on_device=True, tile=2048)(raw)
    PrepareStage(lambda: model, masks_on_device=False, tile=2048)(host)  # send_probability
    assert raw.model_input is None and host.model_input is not None
    assert raw.error is None and host.error is None

    # What the inference stage does with each, then the segment stage.
    multiple = bundle.config.size_multiple
    raw.mask = engine.predict_masks([frame.image], "max", multiple, [0.5])[0]
    x = host.model_input
    host.probability = engine.predict(x.padded[None, None])[0][: x.grid_shape[0], : x.grid_shape[1]]
    host.frame_shape = x.frame_shape
    for w in (raw, host):
        w.threshold = 0.5
        SegmentStage(measure_particles, send_probability=False, encoding="raw")(w)
        assert w.error is None and w.segmentation is not None
    assert raw.mask is None and raw.probability is None and host.probability is None
    assert raw.segmentation is not None and host.segmentation is not None
    assert raw.segmentation.n_particles > 0
    assert raw.segmentation.particles == host.segmentation.particles
    np.testing.assert_array_equal(raw.segmentation.mask, host.segmentation.mask)
