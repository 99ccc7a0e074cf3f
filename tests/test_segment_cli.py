"""`temseg segment` end to end: real TIFF files, a tiny saved bundle, the torch engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage
from typer.testing import CliRunner

from temseg.cli import app
from temseg.engine import load_engine
from temseg.frames import read_frame
from temseg.inference import segment_frame
from temseg.model.bundle import load_bundle, save_bundle
from temseg.model.unet import UNetConfig, build_unet

TINY = UNetConfig(filters=(2, 4), centre=4, preset=None)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_unet(TINY)
    with torch.no_grad():
        model.head.weight.mul_(300.0)  # spread the probabilities over [0, 1]
    metadata = {"default_threshold": 0.5, "thresholds": {"Au": 0.6}}
    return save_bundle(model, metadata, tmp_path_factory.mktemp("model"))


def lattice(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    return 100 + 50 * np.sin(x / 2.1) * np.sin(y / 2.9) + rng.normal(0, 10, shape)


@pytest.fixture
def frames(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "raw"
    folder.mkdir()
    a, b = folder / "a.tif", folder / "b.tif"
    tifffile.imwrite(
        a, lattice((64, 80), 1).astype(np.uint16), metadata={"pixel_nm": 0.1, "material": "Au"}
    )
    tifffile.imwrite(b, lattice((50, 50), 2).clip(0, 255).astype(np.uint8))
    (folder / "b.json").write_text('{"pixel_nm": 0.2}')
    return [a, b]


def run(*args: str | Path) -> tuple[int, list[dict], str]:
    result = CliRunner().invoke(app, ["segment", *map(str, args)])
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.exit_code, lines, result.stderr


def engine_flags(bundle_dir: Path) -> list[str | Path]:
    return ["--model", bundle_dir, "--backend", "torch", "--threads", "1"]


def test_two_frames_end_to_end(tmp_path: Path, frames: list[Path], bundle_dir: Path) -> None:
    before = [f.read_bytes() for f in frames]
    out = tmp_path / "masks"
    every = ("--min-particle-nm", "0")  # every component is a particle
    code, lines, err = run(*frames, "--out", out, *every, *engine_flags(bundle_dir))
    assert code == 0, err
    assert [line["file"] for line in lines] == [str(f) for f in frames]
    a, b = lines
    assert (a["material"], a["threshold"], a["pixel_nm"]) == ("Au", 0.6, 0.1)
    assert (b["material"], b["threshold"], b["pixel_nm"]) == (None, 0.5, 0.2)
    assert a["model_id"] == load_bundle(bundle_dir).model_id
    assert [f.read_bytes() for f in frames] == before  # inputs untouched

    bundle = load_bundle(bundle_dir)
    engine = load_engine(bundle, backend="torch", threads=1)
    for frame_path, line in zip(frames, lines, strict=True):
        assert set(line["timing_ms"]) == {"read", "infer", "segment", "total"}
        mask_path = out / f"{frame_path.stem}_mask.tif"
        assert line["mask"] == str(mask_path)
        mask = tifffile.imread(mask_path)
        frame = read_frame(frame_path)
        assert mask.dtype == np.uint8 and mask.shape == frame.image.shape
        assert set(np.unique(mask)) <= {0, 1}
        expected = segment_frame(frame, engine, bundle, threshold=line["threshold"])
        np.testing.assert_array_equal(mask, expected.segmentation.mask)
        _, n = ndimage.label(mask, structure=np.ones((3, 3)))
        assert line["n_particles"] == n > 0
        assert line["area_fraction"] == pytest.approx(mask.mean())
        particle = line["particles"][0]
        assert {"label", "area_px", "equiv_diameter_px", "centroid", "bbox"} <= set(particle)
        assert particle["equiv_diameter_nm"] == pytest.approx(
            particle["equiv_diameter_px"] * line["pixel_nm"]
        )
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.tif", "b_mask.tif"]
    assert sorted(p.name for p in frames[0].parent.iterdir()) == ["a.tif", "b.json", "b.tif"]


def test_flags_override_material_threshold_and_pixel_size(
    frames: list[Path], bundle_dir: Path
) -> None:
    code, lines, _ = run(*frames, "--material", "Au", *engine_flags(bundle_dir))
    assert code == 0
    assert [(line["material"], line["threshold"]) for line in lines] == [("Au", 0.6)] * 2
    code, lines, _ = run(
        frames[1], "--threshold", "0.3", "--pixel-nm", "0.5", *engine_flags(bundle_dir)
    )
    assert code == 0
    (line,) = lines
    assert (line["threshold"], line["pixel_nm"], line["mask"]) == (0.3, 0.5, None)


def test_without_pixel_size_no_nm_values(tmp_path: Path, bundle_dir: Path) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, lattice((48, 48), 3).astype(np.float32))
    code, lines, _ = run(path, *engine_flags(bundle_dir))
    assert code == 0
    assert lines[0]["pixel_nm"] is None
    assert all("equiv_diameter_nm" not in p for p in lines[0]["particles"])


def test_bad_frame_reported_and_others_continue(
    tmp_path: Path, frames: list[Path], bundle_dir: Path
) -> None:
    bad = frames[0].parent / "bad.tif"
    bad.write_text("not an image")
    out = tmp_path / "masks"
    code, lines, err = run(frames[0], bad, frames[1], "--out", out, *engine_flags(bundle_dir))
    assert code == 1
    assert [line["file"] for line in lines] == [str(frames[0]), str(frames[1])]
    assert "bad.tif" in err and "not a readable TIFF" in err
    assert bad.read_text() == "not an image"
    assert not (out / "bad_mask.tif").exists()


def test_refuses_to_overwrite_an_input(frames: list[Path], bundle_dir: Path) -> None:
    folder = frames[0].parent
    victim = folder / "a_mask.tif"
    tifffile.imwrite(victim, np.full((16, 16), 9, np.uint16))
    original = victim.read_bytes()
    code, lines, err = run(frames[0], victim, "--out", folder, *engine_flags(bundle_dir))
    assert code == 1
    assert "refusing to overwrite input" in err
    assert victim.read_bytes() == original
    assert [line["file"] for line in lines] == [str(victim)]
    assert (folder / "a_mask_mask.tif").is_file()


def test_missing_model_is_an_error(tmp_path: Path, frames: list[Path]) -> None:
    code, lines, err = run(frames[0], "--model", tmp_path / "no-model")
    assert code == 1 and lines == []
    assert "not a model bundle" in err


def test_non_positive_pixel_size_rejected(frames: list[Path], bundle_dir: Path) -> None:
    code, _, err = run(frames[0], "--pixel-nm", "0", *engine_flags(bundle_dir))
    assert code == 2
    assert "--pixel-nm" in err


def test_stack_segmented_frame_by_frame(
    tmp_path: Path, frames: list[Path], bundle_dir: Path
) -> None:
    import mrcfile

    stack = np.stack([lattice((40, 56), s) for s in (4, 5)]).astype(np.float32)
    movie = tmp_path / "raw" / "movie.mrc"
    with mrcfile.new(movie) as mrc:
        mrc.set_data(stack)
        mrc.set_image_stack()
        mrc.voxel_size = (1.0, 2.0, 1.0)  # x, y, z in Angstrom: pixels 0.2 nm tall, 0.1 nm wide
    out = tmp_path / "masks"
    code, lines, err = run(frames[0], movie, "--out", out, *engine_flags(bundle_dir))
    assert code == 0, err
    assert [(line["file"], line["frame_index"]) for line in lines] == [
        (str(frames[0]), 0),
        (str(movie), 0),
        (str(movie), 1),
    ]
    assert lines[0]["shape"] == [64, 80] and lines[0]["pixel_nm_yx"] == [0.1, 0.1]
    for index, line in enumerate(lines[1:]):
        assert line["shape"] == [40, 56]
        assert line["pixel_nm_yx"] == pytest.approx([0.2, 0.1])
        assert line["pixel_nm"] == pytest.approx((0.2 * 0.1) ** 0.5)
        assert line["mask"] == str(out / f"movie_{index}_mask.tif")
        assert tifffile.imread(line["mask"]).shape == (40, 56)


def test_file_without_image_reported_others_continue(
    tmp_path: Path, frames: list[Path], bundle_dir: Path
) -> None:
    import h5py

    spectrum = tmp_path / "raw" / "eels.emd"
    with h5py.File(spectrum, "w") as f:
        group = f.create_group("data/eels")
        group.attrs["emd_group_type"] = 1
        group["data"] = np.arange(256.0)
    code, lines, err = run(frames[0], spectrum, frames[1], *engine_flags(bundle_dir))
    assert code == 1
    assert [line["file"] for line in lines] == [str(frames[0]), str(frames[1])]
    assert lines[1]["pixel_nm_yx"] == [0.2, 0.2]  # the sidecar's, on both axes
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "eels.emd: no 2-D image" in line


def test_existing_outputs_are_kept_unless_overwrite(frames: list[Path], bundle_dir: Path) -> None:
    folder = frames[0].parent
    truth = folder / "a_mask.tif"  # a ground-truth mask beside its frame, not an input
    tifffile.imwrite(truth, np.ones((64, 80), np.uint8))
    original = truth.read_bytes()
    code, lines, err = run(frames[0], "--out", folder, *engine_flags(bundle_dir))
    assert code == 1 and lines == []
    assert f"{truth} exists; give --overwrite to replace it" in err
    assert truth.read_bytes() == original
    code, lines, err = run(frames[0], "--out", folder, "--overwrite", *engine_flags(bundle_dir))
    assert code == 0, err
    assert truth.read_bytes() != original and lines[0]["mask"] == str(truth)


def test_save_probability_writes_float32_maps(
    tmp_path: Path, frames: list[Path], bundle_dir: Path
) -> None:
    out = tmp_path / "out"
    code, lines, err = run(*frames, "--out", out, "--save-probability", *engine_flags(bundle_dir))
    assert code == 0, err
    bundle = load_bundle(bundle_dir)
    engine = load_engine(bundle, backend="torch", threads=1)
    for frame_path, line in zip(frames, lines, strict=True):
        prob_path = out / f"{frame_path.stem}_prob.tif"
        assert line["probability"] == str(prob_path)
        probability = tifffile.imread(prob_path)
        assert probability.dtype == np.float32
        expected = segment_frame(read_frame(frame_path), engine, bundle, threshold=0.5)
        np.testing.assert_array_equal(probability, expected.probability)
        mask = tifffile.imread(out / f"{frame_path.stem}_mask.tif")
        np.testing.assert_array_equal(mask, probability >= line["threshold"])
    code, _, err = run(frames[0], "--save-probability", *engine_flags(bundle_dir))
    assert code == 2 and "needs --out" in err


def test_db_calibration_sets_the_threshold(
    tmp_path: Path, frames: list[Path], bundle_dir: Path
) -> None:
    from temseg.store import connect, record_calibration

    db = f"sqlite:///{tmp_path / 'cal.db'}"
    engine = connect(db)
    model_id = load_bundle(bundle_dir).model_id
    for threshold in (0.31, 0.42):  # the latest one counts
        record_calibration(
            engine, material="Au", model_id=model_id, threshold=threshold, precision=0.9,
            recall=0.9, dice=0.9, n_images=3, curve={}, plot_path="x.png", criterion="f1",
        )  # fmt: skip
    engine.dispose()
    code, lines, err = run(*frames, "--db", db, *engine_flags(bundle_dir))
    assert code == 0, err
    a, b = lines
    assert (a["material"], a["threshold"], a["threshold_source"]) == ("Au", 0.42, "calibration")
    assert (b["material"], b["threshold"], b["threshold_source"]) == (None, 0.5, "model")
    code, lines, _ = run(frames[0], "--db", db, "--threshold", "0.7", *engine_flags(bundle_dir))
    assert (lines[0]["threshold"], lines[0]["threshold_source"]) == (0.7, "option")


@pytest.mark.parametrize("value", [0, 1000])
def test_a_frame_without_contrast_has_no_particles(tmp_path: Path, value: int) -> None:
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((512, 512), value, np.uint16))
    code, lines, err = run(path, "--backend", "torch", "--threads", "1")  # the bundled model
    assert code == 0, err
    assert lines[0]["n_particles"] == 0 and lines[0]["area_fraction"] == 0.0


def test_components_narrower_than_min_particle_nm_are_not_counted(
    frames: list[Path], bundle_dir: Path
) -> None:
    code, every, _ = run(*frames, "--min-particle-nm", "0", *engine_flags(bundle_dir))
    assert code == 0
    code, wide, _ = run(*frames, "--min-particle-nm", "0.8", *engine_flags(bundle_dir))
    assert code == 0
    for all_components, counted in zip(every, wide, strict=True):
        smallest_px = np.pi / 4 * (0.8 / counted["pixel_nm"]) ** 2
        expected = [p for p in all_components["particles"] if p["area_px"] >= smallest_px]
        assert counted["particles"] == expected
        assert counted["n_particles"] == len(expected)
        assert counted["area_fraction"] == all_components["area_fraction"]
    assert sum(len(line["particles"]) for line in every) > sum(
        len(line["particles"]) for line in wide
    )
