"""Frame/mask/sidecar writers and the ``temseg simulate`` command, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from temseg.cli import app
from temseg.frames.write import write_frame_tiff, write_mask_tiff, write_sidecar
from temseg.synth import frame_seed, simulate_frame


def _description(page: tifffile.TiffPage) -> dict:
    return json.loads(page.description)


def test_frame_tiff_round_trip(tmp_path: Path) -> None:
    image = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    path = write_frame_tiff(
        tmp_path / "Au_00001.tif",
        image,
        pixel_nm=0.05,
        metadata={"material": "Au", "defocus_nm": np.float32(-7.5), "seed": np.int64(3)},
    )
    assert path == tmp_path / "Au_00001.tif"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Au_00001.tif"]  # no .part left
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert np.array_equal(page.asarray(), image)
        meta = _description(page)
        assert meta["pixel_nm"] == 0.05 and meta["material"] == "Au"
        assert meta["defocus_nm"] == -7.5 and meta["seed"] == 3
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        x_num, x_den = page.tags["XResolution"].value
        y_num, y_den = page.tags["YResolution"].value
        assert x_num / x_den == pytest.approx(1e7 / 0.05)  # pixels per cm
        assert y_num / y_den == pytest.approx(1e7 / 0.05)


def test_frame_tiff_without_pixel_size_has_no_pixel_key(tmp_path: Path) -> None:
    path = write_frame_tiff(tmp_path / "f.tif", np.zeros((8, 8), np.uint16))
    with tifffile.TiffFile(path) as tif:
        assert "pixel_nm" not in _description(tif.pages.first)
    with pytest.raises(ValueError, match="2-D"):
        write_frame_tiff(tmp_path / "g.tif", np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="pixel_nm"):
        write_frame_tiff(tmp_path / "g.tif", np.zeros((8, 8), np.uint16), pixel_nm=0.0)
    assert not (tmp_path / "g.tif").exists()


def test_mask_tiff_is_compressed_uint8(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 5:25] = True
    path = write_mask_tiff(tmp_path / "m_mask.tif", mask)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        data = page.asarray()
    assert data.dtype == np.uint8 and np.array_equal(data, mask.astype(np.uint8))
    raw = write_mask_tiff(tmp_path / "raw_mask.tif", mask, compress=False)
    with tifffile.TiffFile(raw) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.NONE
    with pytest.raises(ValueError, match="0 and 1"):
        write_mask_tiff(tmp_path / "bad.tif", np.full((4, 4), 255, np.uint8))


def test_sidecar_converts_numpy_types(tmp_path: Path) -> None:
    meta = {"a": np.int32(2), "b": np.array([1.5, 2.5]), "c": (np.bool_(True), None)}
    path = write_sidecar(tmp_path / "Au_00002.tif", meta)
    assert path == tmp_path / "Au_00002.json"
    assert json.loads(path.read_text()) == {"a": 2, "b": [1.5, 2.5], "c": [True, None]}
    assert write_sidecar(tmp_path / "x.json", {}).name == "x.json"


def _simulate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["simulate", *args])
    return result.exit_code, result.output


def test_simulate_writes_frames_masks_and_sidecars(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    code, output = _simulate(
        "--material", "Au,CdSe", "--count", "2", "--size", "96", "--out", str(out), "--seed", "1"
    )
    assert code == 0, output
    assert "wrote 2 frames" in output
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "Au_00000.json",
        "Au_00000.tif",
        "Au_00000_mask.tif",
        "CdSe_00001.json",
        "CdSe_00001.tif",
        "CdSe_00001_mask.tif",
    ]
    for stem, material, index in (("Au_00000", "Au", 0), ("CdSe_00001", "CdSe", 1)):
        with tifffile.TiffFile(out / f"{stem}.tif") as tif:
            image = tif.pages.first.asarray()
            meta = _description(tif.pages.first)
        assert image.dtype == np.uint16 and image.shape == (96, 96)
        assert meta["pixel_nm"] == 0.05 and meta["material"] == material
        mask = tifffile.imread(out / f"{stem}_mask.tif")
        assert mask.dtype == np.uint8 and mask.shape == (96, 96) and mask.max() <= 1
        sidecar = json.loads((out / f"{stem}.json").read_text())
        assert sidecar["material"] == material and sidecar["pixel_nm"] == 0.05
        assert sidecar["frame_index"] == index and sidecar["run_seed"] == 1
        assert len(sidecar["particles"]) == sidecar["n_particles"]
        # each frame is reproducible on its own from (seed, material, index)
        again = simulate_frame(material, 96, frame_seed(1, material, index))
        assert again.image.tobytes() == image.tobytes()
        assert again.mask.tobytes() == mask.tobytes()


def test_simulate_start_index_and_refusing_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "au"
    args = ["--count", "1", "--size", "64", "--out", str(out), "--seed", "2", "--pixel-nm", "0.08"]
    code, output = _simulate(*args, "--start-index", "5", "--particles", "1")
    assert code == 0, output
    before = (out / "Au_00005.tif").read_bytes()
    assert json.loads((out / "Au_00005.json").read_text())["n_particles"] == 1
    with tifffile.TiffFile(out / "Au_00005.tif") as tif:
        assert _description(tif.pages.first)["pixel_nm"] == 0.08

    code, output = _simulate(*args, "--start-index", "5", "--seed", "3")
    assert code == 1 and "exists" in output
    assert (out / "Au_00005.tif").read_bytes() == before  # nothing lost

    code, output = _simulate(*args, "--start-index", "5", "--seed", "3", "--overwrite")
    assert code == 0, output
    assert (out / "Au_00005.tif").read_bytes() != before


def test_simulate_rejects_an_unknown_material(tmp_path: Path) -> None:
    code, output = _simulate("--material", "Au,Ag", "--out", str(tmp_path / "x"))
    assert code == 2
    assert "unknown material Ag" in output and "Au, CdSe" in output
    assert not (tmp_path / "x").exists()
