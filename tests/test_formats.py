"""Microscope file formats: real sample files, own MRC/EMD/SER fixtures, stacks, units."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

from temseg.frames import (
    FrameError,
    IncompleteFrameError,
    model_grid_shape,
    nm_per_unit,
    read_frame,
    read_frames,
    to_nm,
)
from temseg.frames.frame import Frame

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "formats"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/formats absent")


# --- units -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "nm"),
    [
        ("nm", 1.0),
        ("NM", 1.0),
        ("um", 1e3),
        ("\u00b5m", 1e3),  # micro sign
        ("\u03bcm", 1e3),  # Greek mu
        ("\\u00B5m", 1e3),
        ("micron", 1e3),
        ("pm", 1e-3),
        ("A", 0.1),
        ("\u00c5", 0.1),  # Å
        ("\u212b", 0.1),  # Angstrom sign
        ("angstrom", 0.1),
        ("m", 1e9),
        ("n_m", 1.0),  # Berkeley EMD
        ("[n_m]", 1.0),
        ("[u_m]", 1e3),
        (b"nm", 1.0),
    ],
)
def test_unit_table(unit: str | bytes, nm: float) -> None:
    assert nm_per_unit(unit) == pytest.approx(nm)


@pytest.mark.parametrize("unit", ["", "[]", "1/nm", "px", "s", "eV", None])
def test_unknown_units_give_none(unit: str | None) -> None:
    assert nm_per_unit(unit) is None


def test_to_nm_refuses_uncalibrated_values() -> None:
    assert to_nm(2.5, "A") == pytest.approx(0.25)
    assert to_nm(8.1728831922978511e-12, "m") == pytest.approx(0.0081728831922978511)
    assert to_nm(0.0, "nm") is None
    assert to_nm(-1.0, "nm") is None
    assert to_nm(float("nan"), "nm") is None
    assert to_nm(1.0, "1/nm") is None


# --- Frame and anisotropic resampling --------------------------------------------------------


def test_frame_pixel_sizes_agree() -> None:
    square = Frame(np.zeros((2, 2), np.uint8), pixel_nm=0.5)
    assert square.pixel_nm_yx == (0.5, 0.5)
    wide = Frame(np.zeros((2, 2), np.uint8), pixel_nm_yx=(0.2, 0.8))
    assert wide.pixel_nm == pytest.approx(0.4)  # equal area: sqrt(0.2 * 0.8)
    assert Frame(np.zeros((2, 2), np.uint8)).pixel_nm_yx is None
    with pytest.raises(ValueError, match="disagrees"):
        Frame(np.zeros((2, 2), np.uint8), pixel_nm=0.5, pixel_nm_yx=(0.2, 0.8))


def test_non_square_pixels_resampled_per_axis() -> None:
    assert model_grid_shape((64, 128), (0.2, 1.0), 0.5) == (26, 256)
    assert model_grid_shape((64, 128), 0.25, 0.5) == (32, 64)
    assert model_grid_shape((64, 128), None, 0.5) == (64, 128)


# --- real files from microscopes -------------------------------------------------------------

# name, frames, shape, dtype, pixel (y, x) in nm or None; from the folder's README, checked
# against a second, independent reader
REAL = [
    ("dmTest_float32_nonSquare_diffPixelSize.dm4", 1, (64, 128), "float32", (0.2, 1.0)),
    ("test-1.dm4", 1, (2, 2), "int16", None),
    ("test_STEM_image.dm3", 1, (68, 68), "uint32", (0.248538, 0.248538)),
    ("Fei HAADF-UK_location.dm3", 1, (4, 16), "uint16", (5.506073, 5.506073)),
    ("fei_example_tem_stack.emd", 2, (3, 3), "int16", (0.0081729, 0.0081729)),
    ("ncem_STEM HAADF Diffraction Micro.emd", 1, (128, 128), "uint16", (87.371, 87.371)),
    ("fei_example_dpc_titles.emd", 8, (2, 2), None, (0.099620, 0.099620)),
    ("example_image.emd", 1, (3, 3), "int32", None),
    ("128x128_TEM_acquire-sum1_1.ser", 1, (128, 128), "int32", (21.479, 21.479)),
    ("20241021_00405_final.mrc", 1, (4, 8), "float32", (0.2, 0.1)),
    ("FEI-Helios-Ebeam-8bits.tif", 1, (471, 512), "uint8", (3372.4, 3372.4)),
    ("olympus_SIS.tif", 1, (101, 112), "uint16", (0.023928, 0.023928)),
]


@needs_samples
@pytest.mark.parametrize(("name", "n", "shape", "dtype", "pixel"), REAL)
def test_real_files(
    name: str,
    n: int,
    shape: tuple[int, int],
    dtype: str | None,
    pixel: tuple[float, float] | None,
) -> None:
    path = SAMPLES / name
    before = path.read_bytes()
    frames = read_frames(path)
    assert len(frames) == n
    assert [f.frame_index for f in frames] == list(range(n))
    for frame in frames:
        assert frame.image.shape == shape
        assert frame.n_frames == n
        if dtype is not None:
            assert frame.image.dtype == np.dtype(dtype)
        if pixel is None:
            assert frame.pixel_nm_yx is None and frame.pixel_nm is None
        else:
            assert frame.pixel_nm_yx == pytest.approx(pixel, rel=1e-4)
    # the same frames from the bytes already read, as the daemon decodes them
    again = read_frames(path, data=before)
    for a, b in zip(frames, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
    assert path.read_bytes() == before


@needs_samples
def test_real_file_metadata() -> None:
    ser = read_frame(SAMPLES / "128x128_TEM_acquire-sum1_1.ser").metadata
    assert (ser["voltage_kv"], ser["magnification"]) == (200.0, 5500.0)  # from the .emi
    assert ser["acquired"] == "Mon Feb 22 18:57:51 2016"
    velox = read_frame(SAMPLES / "fei_example_tem_stack.emd").metadata
    assert (velox["voltage_kv"], velox["detector"]) == (300.0, "BM-Ceta")
    assert velox["magnification"] == pytest.approx(1271519.155)
    dm3 = read_frame(SAMPLES / "test_STEM_image.dm3").metadata
    assert (dm3["voltage_kv"], dm3["magnification"]) == (200.0, 225000.0)
    fei = read_frame(SAMPLES / "FEI-Helios-Ebeam-8bits.tif").metadata
    assert (fei["voltage_kv"], fei["pixel_nm_source"]) == (5.0, "fei")


@needs_samples
def test_real_ser_rows_top_first() -> None:
    # TIA stores the bottom row first; the frame's first row is the image's top
    data = (SAMPLES / "128x128_TEM_acquire-sum1_1.ser").read_bytes()
    frame = read_frame(SAMPLES / "128x128_TEM_acquire-sum1_1.ser")
    (offsets_at,) = struct.unpack_from("<q", data, 22)  # version 0x0220: 8-byte offsets
    (element_at,) = struct.unpack_from("<q", data, offsets_at)
    pixels_at = element_at + struct.calcsize("<ddiddihii")
    stored = np.frombuffer(data, "<i4", 128 * 128, pixels_at).reshape(128, 128)
    np.testing.assert_array_equal(frame.image, stored[::-1])


@needs_samples
def test_emi_file_points_to_its_ser() -> None:
    with pytest.raises(FrameError, match=r"acquire-sum1\.emi.*_1\.ser"):
        read_frames(SAMPLES / "128x128_TEM_acquire-sum1.emi")


@needs_samples
def test_format_told_by_content_not_name(tmp_path: Path) -> None:
    renamed = tmp_path / "frame.dat"
    renamed.write_bytes((SAMPLES / "dmTest_float32_nonSquare_diffPixelSize.dm4").read_bytes())
    assert read_frame(renamed).pixel_nm_yx == pytest.approx((0.2, 1.0))


@needs_samples
@pytest.mark.parametrize(
    "name", ["test_STEM_image.dm3", "dmTest_float32_nonSquare_diffPixelSize.dm4"]
)
def test_truncated_dm_is_incomplete(tmp_path: Path, name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(IncompleteFrameError, match="truncated"):
        read_frames(path)


# --- MRC written with mrcfile ----------------------------------------------------------------


def write_mrc(path: Path, data: np.ndarray, voxel_a: float | tuple[float, float, float]) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if data.ndim == 3:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_a
    return path


def test_mrc_single_image(tmp_path: Path) -> None:
    image = np.arange(48 * 64, dtype=np.float32).reshape(48, 64)
    path = write_mrc(tmp_path / "one.mrc", image, 1.5)
    (frame,) = read_frames(path)
    np.testing.assert_array_equal(frame.image, image)
    assert frame.pixel_nm_yx == pytest.approx((0.15, 0.15))
    assert frame.metadata["format"] == "mrc"


def test_mrc_stack_frame_by_frame(tmp_path: Path) -> None:
    stack = np.stack([np.full((16, 24), i, np.uint16) for i in range(3)])
    path = write_mrc(tmp_path / "movie.mrcs", stack, (2.0, 4.0, 1.0))  # x, y, z in Angstrom
    frames = read_frames(path, data=path.read_bytes())
    assert [f.frame_index for f in frames] == [0, 1, 2]
    assert [int(f.image[0, 0]) for f in frames] == [0, 1, 2]
    assert all(f.image.shape == (16, 24) for f in frames)
    assert frames[0].pixel_nm_yx == pytest.approx((0.4, 0.2))


def test_mrc_int8_widened(tmp_path: Path) -> None:
    image = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    (frame,) = read_frames(write_mrc(tmp_path / "i8.mrc", image, 1.0))
    assert frame.image.dtype == np.int16
    np.testing.assert_array_equal(frame.image, image)


def test_mrc_without_calibration(tmp_path: Path) -> None:
    (frame,) = read_frames(write_mrc(tmp_path / "nocal.mrc", np.zeros((8, 8), np.int16), 0.0))
    assert frame.pixel_nm_yx is None


def test_truncated_mrc_is_incomplete(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "t.mrc", np.zeros((64, 64), np.float32), 1.0)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(IncompleteFrameError, match=r"t\.mrc.*truncated"):
        read_frames(path)


# --- EMD written with h5py -------------------------------------------------------------------


def velox_metadata(pixel_m: float, frames: int) -> np.ndarray:
    meta = {
        "BinaryResult": {
            "PixelSize": {"width": repr(pixel_m), "height": repr(pixel_m)},
            "PixelUnitX": "m",
            "PixelUnitY": "m",
            "Detector": "BM-Ceta",
        },
        "Optics": {"AccelerationVoltage": "200000"},
    }
    text = json.dumps(meta).encode()
    column = np.zeros(4096, np.uint8)
    column[: len(text)] = np.frombuffer(text, np.uint8)
    return np.repeat(column[:, None], frames, axis=1)


def write_velox(path: Path, signals: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        f["Version"] = np.array([b'{"version": "8", "format": "Velox"}'], dtype=object)
        for name, data in signals.items():
            group = f.create_group(f"Data/Image/{name}")
            group["Data"] = data
            frames = data.shape[2] if data.ndim == 3 else 1
            group["Metadata"] = velox_metadata(1.25e-10, frames)
        f["Data/Spectrum/s0/Data"] = np.arange(2048, dtype=np.uint32)[:, None]
    return path


def test_velox_stack_and_signals(tmp_path: Path) -> None:
    stack = np.stack([np.full((20, 30), i, np.int16) for i in range(4)], axis=-1)  # (y, x, frames)
    complex_signal = np.zeros((20, 30, 1), dtype=[("realFloat", "<f4"), ("imagFloat", "<f4")])
    haadf = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30, 1)
    path = write_velox(tmp_path / "v.emd", {"a": stack, "b": complex_signal, "c": haadf})
    frames = read_frames(path, data=path.read_bytes())
    assert len(frames) == 5  # 4 stack frames, the complex signal and the spectrum skipped
    assert [int(f.image[0, 0]) for f in frames[:4]] == [0, 1, 2, 3]
    np.testing.assert_array_equal(frames[4].image, haadf[:, :, 0])
    assert all(f.image.shape == (20, 30) for f in frames)
    assert frames[0].pixel_nm_yx == pytest.approx((0.125, 0.125))
    assert frames[0].metadata["voltage_kv"] == 200.0
    assert frames[4].metadata["dataset"] == "/Data/Image/c"


def write_berkeley(path: Path, data: np.ndarray, dims: list[tuple[np.ndarray, str]]) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["version_major"], f.attrs["version_minor"] = 0, 2
        group = f.create_group("data/signal")
        group.attrs["emd_group_type"] = 1
        group["data"] = data
        for i, (values, units) in enumerate(dims, start=1):
            group[f"dim{i}"] = values
            group[f"dim{i}"].attrs["units"] = units
    return path


def test_berkeley_emd_units_and_stack(tmp_path: Path) -> None:
    data = np.arange(3 * 10 * 12, dtype=np.float32).reshape(3, 10, 12)
    dims = [
        (np.arange(3.0), "[s]"),
        (np.arange(10) * 0.5, "[n_m]"),
        (np.arange(12) * 2.0, "[A]"),
    ]
    frames = read_frames(write_berkeley(tmp_path / "b.emd", data, dims))
    assert len(frames) == 3
    np.testing.assert_array_equal(frames[2].image, data[2])
    assert frames[0].pixel_nm_yx == pytest.approx((0.5, 0.2))


def test_spectrum_only_file_refused(tmp_path: Path) -> None:
    path = write_berkeley(
        tmp_path / "spectrum.emd", np.arange(100.0), [(np.arange(100) * 0.01, "[eV]")]
    )
    with pytest.raises(FrameError, match=r"spectrum\.emd: no 2-D image"):
        read_frames(path)


def test_half_written_hdf5_is_incomplete(tmp_path: Path) -> None:
    path = write_velox(tmp_path / "v.emd", {"a": np.zeros((64, 64, 2), np.uint16)})
    data = path.read_bytes()
    for cut in (len(data) // 2, 600):
        with pytest.raises(IncompleteFrameError, match=r"v\.emd"):
            read_frames(path, data=data[:cut])


# --- SER written here, after the published layout --------------------------------------------


def write_ser(path: Path, images: list[np.ndarray] | None, delta_m: float = 2e-10) -> Path:
    """A TIA SER file, version 0x0220; ``images`` None writes one spectrum instead."""
    kind = 0x4120 if images is None else 0x4122
    elements: list[bytes] = []
    if images is None:
        spectrum = np.arange(64, dtype="<f4")
        elements.append(struct.pack("<ddihi", 0.0, 1.0, 0, 7, 64) + spectrum.tobytes())
    else:
        for image in images:
            height, width = image.shape
            head = struct.pack("<ddiddihii", 0, delta_m, 0, 0, delta_m, 0, 6, width, height)
            elements.append(head + np.ascontiguousarray(image[::-1], dtype="<i4").tobytes())
    n = len(elements)
    header = struct.pack("<HHHiiii", 0x4949, 0x0197, 0x0220, kind, 0x4152, n, n)
    dims = struct.pack("<i", 1) + struct.pack("<iddii", n, 0.0, 1.0, 0, 0) + struct.pack("<i", 0)
    array_at = len(header) + 8 + len(dims)
    data_at = array_at + 16 * n
    offsets, at = [], data_at
    for element in elements:
        offsets.append(at)
        at += len(element)
    body = struct.pack(f"<{n}q", *offsets) + struct.pack(f"<{n}q", *([0] * n))
    path.write_bytes(header + struct.pack("<q", array_at) + dims + body + b"".join(elements))
    return path


def test_ser_series(tmp_path: Path) -> None:
    images = [np.arange(6 * 8, dtype=np.int32).reshape(6, 8) + 100 * i for i in range(2)]
    frames = read_frames(write_ser(tmp_path / "acq_1.ser", images))
    assert len(frames) == 2
    for frame, image in zip(frames, images, strict=True):
        np.testing.assert_array_equal(frame.image, image)
    assert frames[1].pixel_nm_yx == pytest.approx((0.2, 0.2))
    assert "voltage_kv" not in frames[0].metadata  # no .emi next to it


def test_ser_spectrum_refused(tmp_path: Path) -> None:
    with pytest.raises(FrameError, match=r"acq_2\.ser: SER file holds spectra, no 2-D image"):
        read_frames(write_ser(tmp_path / "acq_2.ser", None))


def test_truncated_ser_is_incomplete(tmp_path: Path) -> None:
    path = write_ser(tmp_path / "t_1.ser", [np.zeros((32, 32), np.int32)])
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IncompleteFrameError):
        read_frames(path)


# --- TIFF stacks ------------------------------------------------------------------------------


def test_tiff_stack_of_equal_pages(tmp_path: Path) -> None:
    stack = np.stack([np.full((32, 40), i, dtype=np.uint16) for i in (7, 8, 9)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"pixel_nm": 0.1})
    frames = read_frames(path, data=path.read_bytes())
    assert [int(f.image[0, 0]) for f in frames] == [7, 8, 9]
    assert [f.frame_index for f in frames] == [0, 1, 2]
    assert all(f.pixel_nm == pytest.approx(0.1) for f in frames)


def test_tiff_thumbnails_and_colour_previews_skipped(tmp_path: Path) -> None:
    path = tmp_path / "with_thumb.tif"
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((16, 16, 3), np.uint8), photometric="rgb")  # colour preview
        tif.write(image, photometric="minisblack")
        tif.write(np.zeros((8, 8), np.uint16), subfiletype=1)  # reduced-resolution thumbnail
        tif.write(np.zeros((20, 20), np.uint16))  # another shape: not part of the frames
    (frame,) = read_frames(path)
    np.testing.assert_array_equal(frame.image, image)


def test_tiff_anisotropic_resolution(tmp_path: Path) -> None:
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(
        path, np.zeros((8, 8), np.uint8), resolution=(1e7, 5e6), resolutionunit="CENTIMETER"
    )
    assert read_frame(path).pixel_nm_yx == pytest.approx((2.0, 1.0))


def test_unknown_content_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.dat"
    path.write_text("exposure 1 s\n")
    with pytest.raises(FrameError, match=r"notes\.dat: unrecognised file format"):
        read_frames(path)


def test_jeol_tiff_names_the_extra_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rsciio", None)  # as in a default install: not importable
    monkeypatch.setitem(sys.modules, "rsciio.tiff", None)
    path = tmp_path / "jeol.tif"
    tifffile.imwrite(
        path,
        np.zeros((16, 16), np.uint16),
        extratags=[(271, "s", 0, "JEOL Ltd.", True)],  # Make
        resolution=(1e4, 1e4),
        resolutionunit="NONE",
    )
    frame = read_frame(path)
    assert frame.pixel_nm_yx is None
    assert "pip install 'temseg[formats]'" in frame.metadata["pixel_nm_note"]
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((16, 16), np.uint16))
    assert "pixel_nm_note" not in read_frame(plain).metadata


def test_default_watch_patterns_cover_the_formats() -> None:
    from temseg.config import Settings
    from temseg.daemon.watcher import DEFAULT_PATTERNS
    from temseg.frames import FORMATS
    from temseg.frames.find import DEFAULT_PATTERNS as FIND_PATTERNS

    patterns = set(Settings().patterns)
    assert patterns == set(DEFAULT_PATTERNS) == set(FIND_PATTERNS)
    for globs in FORMATS.values():
        assert set(globs) - {"*.h5", "*.hdf5"} <= patterns
    assert "*.emi" not in patterns
