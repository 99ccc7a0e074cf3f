"""Labelled data as people keep it: PNG/JPEG, gray RGB(A), mask encodings, CSV pair lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_trainer import blob_frame
from typer.testing import CliRunner

from temseg.calibrate.run import calibrate
from temseg.cli import app
from temseg.trainer.data import (
    DataError,
    find_pairs,
    load_folders,
    read_labelled_frame,
    read_pairs_file,
)


@pytest.fixture
def blob():
    image, mask = blob_frame(np.random.default_rng(7), 64)
    return (image // 8).astype(np.uint8), mask


def test_grayscale_png_and_jpeg_images(tmp_path, blob):
    image, mask = blob
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image).save(tmp_path / "b.jpg", quality=95)
    Image.fromarray(image.astype(np.uint16) * 200).save(tmp_path / "c.png")  # 16-bit
    for name in ("a", "b", "c"):
        Image.fromarray(mask * 255).save(tmp_path / f"{name}_mask.png")
    frames = load_folders([tmp_path])
    assert [f.name for f in frames] == ["a", "b", "c"]
    np.testing.assert_array_equal(frames[0].image, image)
    assert np.abs(frames[1].image.astype(int) - image).mean() < 3  # lossy, but the same image
    np.testing.assert_array_equal(frames[2].image, image.astype(np.uint16) * 200)
    for f in frames:
        np.testing.assert_array_equal(f.mask, mask)


def test_rgb_and_rgba_with_equal_channels_are_gray(tmp_path, blob):
    image, mask = blob
    Image.fromarray(np.stack([image] * 3, axis=-1)).save(tmp_path / "rgb.png")
    rgba = np.dstack([image, image, image, np.full_like(image, 200)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    tifffile.imwrite(tmp_path / "tiffrgb.tif", np.stack([image] * 3, axis=-1), photometric="rgb")
    for name in ("rgb", "rgba", "tiffrgb"):
        tifffile.imwrite(tmp_path / f"{name}_mask.tif", mask)
    for frame in load_folders([tmp_path]):
        assert frame.image.shape == (64, 64)
        np.testing.assert_array_equal(frame.image, image)


def test_colour_images_are_refused_naming_the_file(tmp_path, blob):
    image, mask = blob
    colour = np.stack([image, image // 2, image], axis=-1)
    Image.fromarray(colour).save(tmp_path / "x.png")
    tifffile.imwrite(tmp_path / "x_mask.tif", mask)
    with pytest.raises(DataError, match=r"x\.png: colour image .* save it as a single-channel"):
        load_folders([tmp_path])
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"x\.png: not a readable PNG image"):
        load_folders([tmp_path])


@pytest.mark.parametrize(
    "encode",
    [
        lambda m: m.astype(np.uint8),  # 0/1
        lambda m: (m * 255).astype(np.uint8),  # 0/255
        lambda m: m.astype(bool),
        lambda m: m.astype(np.float32),
    ],
    ids=["0-1", "0-255", "bool", "float-0-1"],
)
def test_mask_encodings(tmp_path, blob, encode):
    image, mask = blob
    tifffile.imwrite(tmp_path / "f.tif", image)
    tifffile.imwrite(tmp_path / "f_mask.tif", encode(mask))
    np.testing.assert_array_equal(
        read_labelled_frame(tmp_path / "f.tif", tmp_path / "f_mask.tif").mask, mask
    )


def test_instance_label_masks_count_every_label_as_particle(tmp_path, blob):
    image, mask = blob
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    assert n >= 2
    tifffile.imwrite(tmp_path / "f.tif", image)
    tifffile.imwrite(tmp_path / "f_mask.tif", (labels * 300).astype(np.uint16))
    Image.fromarray(labels.astype(np.uint8)).save(tmp_path / "g_mask.png")
    Image.fromarray(image).save(tmp_path / "g.png")
    for frame in load_folders([tmp_path]):
        np.testing.assert_array_equal(frame.mask, mask)


def test_bad_masks_are_refused_with_the_fix(tmp_path, blob):
    image, mask = blob
    tifffile.imwrite(tmp_path / "f.tif", image)
    tifffile.imwrite(tmp_path / "f_mask.tif", mask * np.float32(0.5))
    with pytest.raises(DataError, match=r"f_mask\.tif: floating-point mask values .* 0, 0\.5"):
        read_labelled_frame(tmp_path / "f.tif", tmp_path / "f_mask.tif")
    jpeg = tmp_path / "jpeg"
    jpeg.mkdir()
    Image.fromarray(image).save(jpeg / "f.png")
    Image.fromarray(mask * 255).save(jpeg / "f_mask.jpg")
    with pytest.raises(DataError, match=r"f_mask\.jpg: JPEG is lossy, save masks as PNG or TIFF"):
        find_pairs(jpeg)
    twice = tmp_path / "twice"
    twice.mkdir()
    for suffix in (".tif", ".png"):
        Image.fromarray(image).save(twice / f"f{suffix}")
    Image.fromarray(mask).save(twice / "f_mask.png")
    with pytest.raises(DataError, match=r"f\.tif: same name as f\.png"):
        find_pairs(twice)


def write_pairs(folder: Path, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image, mask = blob_frame(rng, 64)
        Image.fromarray((image // 8).astype(np.uint8)).save(folder / f"img{i}.png")
        Image.fromarray(mask * 255).save(folder / f"lbl{i}.png")
        rows.append((f"{folder.name}/img{i}.png", f"{folder.name}/lbl{i}.png"))
    return rows


def test_pairs_file(tmp_path):
    rows = write_pairs(tmp_path / "png", 3, np.random.default_rng(1))
    listing = tmp_path / "pairs.csv"
    listing.write_text("image,mask\n" + "".join(f"{a},{b}\n" for a, b in rows) + "\n")
    pairs = read_pairs_file(listing)
    assert [(p[0].name, p[1].name) for p in pairs] == [
        ("img0.png", "lbl0.png"), ("img1.png", "lbl1.png"), ("img2.png", "lbl2.png"),
    ]  # fmt: skip
    assert len(load_folders([], [listing])) == 3
    listing.write_text(f"{rows[0][0]},{rows[0][1]}\n{rows[1][0]}\n")
    with pytest.raises(DataError, match=r"pairs\.csv line 2: expected two columns"):
        read_pairs_file(listing)
    listing.write_text(f"{rows[0][0]},png/missing.png\n")
    with pytest.raises(DataError, match=r"pairs\.csv line 1: mask .*missing\.png not found"):
        read_pairs_file(listing)


def test_train_and_calibrate_take_pairs_and_material(tmp_path):
    rows = write_pairs(tmp_path / "png", 6, np.random.default_rng(2))
    listing = tmp_path / "pairs.csv"
    listing.write_text("".join(f"{a},{b}\n" for a, b in rows))
    out = tmp_path / "model"
    result = CliRunner().invoke(
        app,
        ["train", "--pairs", str(listing), "--material", "Pt", "--out", str(out), "--epochs",
         "1", "--patch", "64", "--batch", "4", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    calibration = calibrate("Pt", [], pairs=[listing], model=str(out), out=tmp_path)
    assert calibration.curves.n_images == 6
    bad = CliRunner().invoke(
        app, ["train", "--pairs", str(tmp_path / "none.csv"), "--out", str(tmp_path / "m2")]
    )
    assert bad.exit_code == 1 and "none.csv: cannot read pairs file" in bad.output
