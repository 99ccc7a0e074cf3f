"""Frame reading, pixel size, normalisation, resampling, padding and tiling on real TIFF files."""

from __future__ import annotations

import json
import os
import struct
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import tifffile

from temseg.frames import (
    FrameError,
    model_grid_shape,
    normalise,
    pad_to_multiple,
    predict_tiled,
    read_frame,
    read_metadata,
    resample,
    tile_windows,
)

DTYPES = ["uint8", "uint16", "int16", "int32", "uint32", "float32", "float64"]


def ramp(shape: tuple[int, int] = (48, 64), dtype: str = "uint16") -> np.ndarray:
    return (np.arange(shape[0] * shape[1]) % 200).reshape(shape).astype(dtype)


def write(path: Path, image: np.ndarray, **kwargs: object) -> Path:
    tifffile.imwrite(path, image, **kwargs)  # type: ignore[arg-type]
    return path


# --- reading -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_reads_supported_dtypes_as_stored(tmp_path: Path, dtype: str) -> None:
    image = ramp(dtype=dtype)
    frame = read_frame(write(tmp_path / "f.tif", image))
    assert frame.image.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(frame.image, image)
    assert frame.path == tmp_path / "f.tif"
    assert frame.pixel_nm is None
    assert frame.material is None


def test_big_endian_file_gives_native_array(tmp_path: Path) -> None:
    image = ramp(dtype="uint16")
    frame = read_frame(write(tmp_path / "be.tif", image, byteorder=">"))
    assert frame.image.dtype.isnative
    np.testing.assert_array_equal(frame.image, image)


@pytest.mark.parametrize(
    ("compression", "predictor", "stored"),
    [
        ("zlib", None, tifffile.COMPRESSION.ADOBE_DEFLATE),
        ("lzw", None, tifffile.COMPRESSION.LZW),
        ("lzw", "horizontal", tifffile.COMPRESSION.LZW),
        ("zstd", None, tifffile.COMPRESSION.ZSTD),
        ("packbits", None, tifffile.COMPRESSION.PACKBITS),
    ],
)
def test_compressed_frame(
    tmp_path: Path, compression: str, predictor: str | None, stored: tifffile.COMPRESSION
) -> None:
    # LZW (with or without a predictor, as ImageJ and many camera programs write) and
    # Zstandard need imagecodecs' codecs; deflate and PackBits tifffile decodes itself.
    image = ramp(dtype="uint16")
    path = write(tmp_path / "z.tif", image, compression=compression, predictor=predictor)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression == stored
    for data in (None, path.read_bytes()):  # from the file, and from its bytes as the daemon
        frame = read_frame(path, data=data)
        np.testing.assert_array_equal(frame.image, image)


def test_first_page_of_a_stack(tmp_path: Path) -> None:
    stack = np.stack([np.full((32, 40), i, dtype=np.uint16) for i in (7, 8, 9)])
    frame = read_frame(write(tmp_path / "stack.tif", stack, photometric="minisblack"))
    assert frame.image.shape == (32, 40)
    assert (frame.image == 7).all()


def test_reading_never_modifies_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "f.tif", ramp(), metadata={"pixel_nm": 0.1})
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    read_frame(path)
    read_metadata(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.touch()
    with pytest.raises(FrameError, match=r"empty\.tif.*empty file"):
        read_frame(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FrameError, match="no such file"):
        read_frame(tmp_path / "absent.tif")


def test_truncated_pixel_data(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tif", ramp((64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrameError, match=r"t\.tif.*truncated"):
        read_frame(path)


def test_truncated_header(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tif", ramp((64, 64)))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(FrameError, match=r"t\.tif"):
        read_frame(path)


def test_text_file_named_tif(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("exposure 1 s, defocus -20 nm\n")
    with pytest.raises(FrameError, match=r"notes\.tif.*not a readable TIFF"):
        read_frame(path)


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_rejected(tmp_path: Path, channels: int) -> None:
    image = np.zeros((16, 16, channels), dtype=np.uint8)
    kwargs = {"extrasamples": ["unassalpha"]} if channels == 4 else {}
    path = write(tmp_path / "rgb.tif", image, photometric="rgb", **kwargs)
    with pytest.raises(FrameError, match=r"rgb\.tif: RGB frames are not supported.*grayscale"):
        read_frame(path)


def test_unsupported_dtype(tmp_path: Path) -> None:
    path = write(tmp_path / "i8.tif", np.zeros((8, 8), dtype=np.int8))
    with pytest.raises(FrameError, match="unsupported sample type int8"):
        read_frame(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats(tmp_path: Path, bad: float) -> None:
    image = ramp(dtype="float32")
    image[3, 5] = bad
    path = write(tmp_path / "nan.tif", image)
    with pytest.raises(FrameError, match=r"nan\.tif.*NaN or infinite"):
        read_frame(path)


def test_huge_header_rejected_before_decoding(tmp_path: Path) -> None:
    path = write(tmp_path / "huge.tif", np.zeros((16, 16), np.uint8), metadata={"material": "Au"})
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        offsets = [tags[name].valueoffset for name in ("ImageWidth", "ImageLength")]
        assert all(tags[name].dtype == 4 for name in ("ImageWidth", "ImageLength"))  # LONG
    data = bytearray(path.read_bytes())
    for offset in offsets:
        data[offset : offset + 4] = struct.pack("<I", 100_000)
    path.write_bytes(bytes(data))
    with pytest.raises(FrameError, match=r"huge\.tif.*100000 x 100000 pixels exceeds"):
        read_frame(path)
    # metadata is still available without touching the pixels
    assert read_metadata(path)["material"] == "Au"


def test_max_pixels_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "wide.tif", np.zeros((1, 100_000), np.uint8))
    with pytest.raises(FrameError, match="1 x 100000 pixels exceeds the limit of 50000"):
        read_frame(path, max_pixels=50_000)
    assert read_frame(path).image.shape == (1, 100_000)


# --- pixel size and material -----------------------------------------------------------------


def test_pixel_nm_from_sidecar(tmp_path: Path) -> None:
    path = write(tmp_path / "f.tif", ramp())
    (tmp_path / "f.json").write_text(json.dumps({"pixel_nm": 0.125, "material": "CdSe"}))
    frame = read_frame(path)
    assert frame.pixel_nm == pytest.approx(0.125)
    assert frame.material == "CdSe"
    assert frame.metadata["pixel_nm_source"] == "sidecar"


def test_pixel_nm_from_description_json(tmp_path: Path) -> None:
    path = write(tmp_path / "f.tif", ramp(), metadata={"pixel_nm": 0.05, "material": "Au"})
    frame = read_frame(path)
    assert frame.pixel_nm == pytest.approx(0.05)
    assert frame.material == "Au"
    assert frame.metadata["pixel_nm_source"] == "description"
    assert "shape" not in frame.metadata


@pytest.mark.parametrize(
    ("unit", "pixels_per_unit", "expected_nm"),
    [
        ("nm", 10.0, 0.1),
        ("micron", 2000.0, 0.5),
        ("\\u00B5m", 4000.0, 0.25),
        ("um", 1000.0, 1.0),
        ("A", 0.5, 0.2),
    ],
)
def test_pixel_nm_from_imagej(
    tmp_path: Path, unit: str, pixels_per_unit: float, expected_nm: float
) -> None:
    path = write(
        tmp_path / "ij.tif",
        ramp(),
        imagej=True,
        resolution=(pixels_per_unit, pixels_per_unit),
        metadata={"unit": unit},
    )
    frame = read_frame(path)
    assert frame.pixel_nm == pytest.approx(expected_nm)
    assert frame.metadata["pixel_nm_source"] == "imagej"


def test_imagej_without_length_unit_gives_none(tmp_path: Path) -> None:
    path = write(tmp_path / "ij.tif", ramp(), imagej=True, resolution=(3.0, 3.0))
    assert read_frame(path).pixel_nm is None


@pytest.mark.parametrize(
    ("unit", "pixels_per_unit", "expected_nm"),
    [("CENTIMETER", 2e7, 0.5), ("INCH", 2.54e7, 1.0), ("MICROMETER", 4.0, 250.0)],
)
def test_pixel_nm_from_resolution_tags(
    tmp_path: Path, unit: str, pixels_per_unit: float, expected_nm: float
) -> None:
    path = write(
        tmp_path / "r.tif",
        ramp(),
        resolution=(pixels_per_unit, pixels_per_unit),
        resolutionunit=unit,
    )
    frame = read_frame(path)
    assert frame.pixel_nm == pytest.approx(expected_nm)
    assert frame.metadata["pixel_nm_source"] == "resolution"


@pytest.mark.parametrize(
    ("unit", "pixels_per_unit"),
    [("NONE", 2e7), ("INCH", 72.0), ("INCH", 300.0), ("CENTIMETER", 1.0), ("MICROMETER", 1.0)],
)
def test_default_resolution_tags_ignored(tmp_path: Path, unit: str, pixels_per_unit: float) -> None:
    path = write(
        tmp_path / "r.tif",
        ramp(),
        resolution=(pixels_per_unit, pixels_per_unit),
        resolutionunit=unit,
    )
    assert read_frame(path).pixel_nm is None


def test_pixel_nm_priority(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.tif",
        ramp(),
        resolution=(2e7, 2e7),
        resolutionunit="CENTIMETER",
        metadata={"pixel_nm": 0.3, "material": "Pt"},
    )
    frame = read_frame(path)
    assert (frame.pixel_nm, frame.material) == (pytest.approx(0.3), "Pt")  # description > tags
    (tmp_path / "p.json").write_text(json.dumps({"pixel_nm": 0.7}))
    frame = read_frame(path)
    assert (frame.pixel_nm, frame.material) == (pytest.approx(0.7), "Pt")  # sidecar > description
    (tmp_path / "p.json").write_text(json.dumps({"material": "Au"}))
    frame = read_frame(path)
    assert (frame.pixel_nm, frame.material) == (pytest.approx(0.3), "Au")


def test_sidecar_beats_imagej(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ij.tif", ramp(), imagej=True, resolution=(10.0, 10.0), metadata={"unit": "nm"}
    )
    (tmp_path / "ij.json").write_text('{"pixel_nm": 0.02}')
    assert read_frame(path).pixel_nm == pytest.approx(0.02)


def test_read_metadata_matches_read_frame(tmp_path: Path) -> None:
    path = write(tmp_path / "f.tif", ramp(), metadata={"pixel_nm": 0.05, "dose": 40})
    (tmp_path / "f.json").write_text('{"material": "Au"}')
    meta = read_metadata(path)
    assert meta == read_frame(path).metadata
    assert meta["material"] == "Au"
    assert meta["dose"] == 40
    assert meta["pixel_nm"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '{"pixel_nm": -1}', '{"pixel_nm": "fast"}', '{"pixel_nm": 0}']
)
def test_bad_sidecar(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "f.tif", ramp())
    (tmp_path / "f.json").write_text(text)
    with pytest.raises(FrameError, match=r"f\.json"):
        read_frame(path)


def test_sidecar_link_out_of_folder_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.json").write_text('{"pixel_nm": 0.5}')
    frames = tmp_path / "frames"
    frames.mkdir()
    path = write(frames / "f.tif", ramp())
    os.symlink(outside / "secret.json", frames / "f.json")
    with pytest.raises(FrameError, match="outside the frame's folder"):
        read_frame(path)


def test_reads_what_the_project_writers_write(tmp_path: Path) -> None:
    from temseg.frames.write import write_frame_tiff, write_mask_tiff, write_sidecar

    image = ramp(dtype="uint16")
    path = write_frame_tiff(tmp_path / "w.tif", image, pixel_nm=0.08, metadata={"material": "Pt"})
    frame = read_frame(path)
    np.testing.assert_array_equal(frame.image, image)
    assert (frame.pixel_nm, frame.material) == (pytest.approx(0.08), "Pt")
    write_sidecar(path, {"pixel_nm": 0.09, "material": "Au"})
    frame = read_frame(path)
    assert (frame.pixel_nm, frame.material) == (pytest.approx(0.09), "Au")
    mask = (image > 100).astype(np.uint8)
    np.testing.assert_array_equal(read_frame(write_mask_tiff(tmp_path / "m.tif", mask)).image, mask)


# --- normalisation ---------------------------------------------------------------------------


def test_normalise_max_divides_by_max() -> None:
    image = np.array([[0, 50], [100, 200]], dtype=np.uint16)
    out = normalise(image, "max")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0.25], [0.5, 1.0]])
    assert image[1, 1] == 200  # input untouched


def test_normalise_max_leaves_float32_input_untouched() -> None:
    image = np.array([[1.0, 4.0]], dtype=np.float32)
    normalise(image)
    np.testing.assert_array_equal(image, [[1.0, 4.0]])


def test_normalise_minmax_and_zscore() -> None:
    image = np.array([[10, 20], [30, 50]], dtype=np.int16)
    np.testing.assert_allclose(normalise(image, "minmax"), [[0, 0.25], [0.5, 1.0]])
    z = normalise(image, "zscore")
    assert z.mean() == pytest.approx(0.0, abs=1e-6)
    assert z.std() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", ["max", "minmax", "zscore"])
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
def test_normalise_into_a_given_array_gives_the_same_values(method: str, dtype: type) -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 4000, (21, 34)).astype(dtype)
    before = image.copy()
    out = np.full(image.shape, np.nan, dtype=np.float32)
    assert normalise(image, method, out=out) is out
    np.testing.assert_array_equal(out, normalise(image, method))
    np.testing.assert_array_equal(image, before)
    flat = np.full_like(image, 7)
    np.testing.assert_array_equal(normalise(flat, method, out=out), 0.0)  # constant: zeros


def test_normalise_refuses_an_output_of_the_wrong_type_or_shape() -> None:
    image = np.ones((4, 5), dtype=np.uint16)
    with pytest.raises(ValueError, match="float32"):
        normalise(image, out=np.empty((4, 5), dtype=np.float64))
    with pytest.raises(ValueError, match="shape"):
        normalise(image, out=np.empty((5, 4), dtype=np.float32))


@pytest.mark.parametrize("method", ["max", "minmax", "zscore"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32])
def test_normalise_integer_counts_as_float64_arithmetic(method: str, dtype: type) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    image = rng.integers(max(info.min, -3000), min(info.max, 60000), (33, 47)).astype(dtype)
    counts = image.astype(np.float64)
    expected = {
        "max": counts / np.abs(counts).max(),
        "minmax": (counts - counts.min()) / (counts.max() - counts.min()),
        "zscore": (counts - counts.mean()) / counts.std(),
    }[method]
    out = normalise(image, method)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, expected, atol=2e-6)


@pytest.mark.parametrize("method", ["max", "minmax", "zscore"])
def test_normalise_constant_and_empty(method: str) -> None:
    out = normalise(np.full((4, 5), 7, dtype=np.uint16), method)
    assert out.dtype == np.float32 and not out.any()
    assert normalise(np.zeros((0, 3)), method).shape == (0, 3)


def test_normalise_rejects_nan_and_unknown_method() -> None:
    with pytest.raises(FrameError, match="NaN"):
        normalise(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(np.ones((2, 2)), "histeq")


# --- resampling ------------------------------------------------------------------------------


def smooth(shape: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (np.sin(x / 11.0) * np.cos(y / 13.0) + 0.002 * x).astype(np.float32)


def test_resample_round_trip_of_smooth_image() -> None:
    image = smooth((120, 96))
    small = resample(image, (60, 48))
    back = resample(small, (120, 96))
    assert small.shape == (60, 48) and back.shape == (120, 96)
    assert back.dtype == np.float32
    assert np.abs(back - image)[4:-4, 4:-4].max() < 0.02
    assert np.abs(back - image).mean() < 0.01


@pytest.mark.parametrize("shape", [(33, 47), (1, 5), (200, 3), (97, 97)])
def test_resample_shape_is_exact(shape: tuple[int, int]) -> None:
    assert resample(smooth((64, 80)), shape).shape == shape
    assert resample(np.ones((7, 9), np.uint8), shape, order=0).shape == shape


def test_resample_nearest_keeps_dtype_and_values() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[2:4, 6:8] = 1
    up = resample(mask, (20, 20), order=0)
    assert up.dtype == np.uint8
    expected = np.zeros((20, 20), np.uint8)
    expected[4:8, 12:16] = 1
    np.testing.assert_array_equal(up, expected)


def test_resample_same_shape_is_a_copy() -> None:
    image = smooth((16, 16))
    out = resample(image, (16, 16))
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_model_grid_shape() -> None:
    assert model_grid_shape((100, 200), None, 0.1) == (100, 200)
    assert model_grid_shape((100, 200), 0.1, None) == (100, 200)
    assert model_grid_shape((100, 200), 0.2, 0.1) == (200, 400)
    assert model_grid_shape((101, 75), 0.1, 0.2) == (50, 38)
    assert model_grid_shape((3, 3), 0.01, 1.0) == (1, 1)
    with pytest.raises(ValueError, match="positive"):
        model_grid_shape((8, 8), -0.1, 0.1)


# --- padding and tiling ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(37, 50), (16, 16), (1, 9), (64, 17)])
def test_pad_to_multiple_and_crop(shape: tuple[int, int]) -> None:
    image = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape)
    padded, (h, w) = pad_to_multiple(image, 16)
    assert (h, w) == shape
    assert padded.shape[0] % 16 == 0 and padded.shape[1] % 16 == 0
    assert padded.shape[0] - h < 16 and padded.shape[1] - w < 16
    np.testing.assert_array_equal(padded[:h, :w], image)


def test_pad_reflects_and_skips_when_aligned() -> None:
    image = np.arange(6, dtype=np.float32).reshape(1, 6).repeat(2, axis=0)
    padded, _ = pad_to_multiple(image, 4)
    np.testing.assert_array_equal(padded[0], [0, 1, 2, 3, 4, 5, 4, 3])
    aligned = np.zeros((32, 16))
    assert pad_to_multiple(aligned, 16)[0] is aligned


def test_tile_windows_cover_aligned_and_overlap() -> None:
    windows = tile_windows((320, 160), tile=128, overlap=32, multiple=16)
    sizes = {(ys.stop - ys.start, xs.stop - xs.start) for ys, xs in windows}
    assert len(sizes) == 1
    (th, tw), *_ = sizes
    assert th <= 128 and tw <= 128
    covered = np.zeros((320, 160), int)
    for ys, xs in windows:
        assert ys.start % 16 == 0 and xs.start % 16 == 0
        covered[ys, xs] += 1
    assert covered.min() >= 1
    for starts, size in (
        ({ys.start for ys, _ in windows}, th),
        ({x.start for _, x in windows}, tw),
    ):
        assert all(b - a <= size - 32 for a, b in pairwise(sorted(starts)))
    assert tile_windows((64, 96), tile=2048, overlap=64, multiple=16) == [
        (slice(0, 64), slice(0, 96))
    ]


def test_tile_windows_spread_evenly() -> None:
    """A 4096 px frame with 2048 px tiles: 3 x 3 tiles of 1408 px, not 3 x 3 of 2048 px."""
    windows = tile_windows((4096, 4096), tile=2048, overlap=64, multiple=16)
    assert len(windows) == 9
    assert {(ys.stop - ys.start, xs.stop - xs.start) for ys, xs in windows} == {(1408, 1408)}
    assert sorted({ys.start for ys, _ in windows}) == [0, 1344, 2688]
    assert tile_windows((2048, 2048), tile=2048, overlap=64, multiple=16) == [
        (slice(0, 2048), slice(0, 2048))
    ]


def test_tile_windows_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="multiple"):
        tile_windows((100, 64), tile=64, overlap=0, multiple=16)
    with pytest.raises(ValueError, match="no step"):
        tile_windows((128, 128), tile=64, overlap=64, multiple=16)


def test_predict_tiled_stitches_exactly() -> None:
    """A per-pixel function must come back unchanged, whatever the tiling."""
    rng = np.random.default_rng(1)
    image = rng.random((150, 230)).astype(np.float32)
    calls: list[tuple[int, ...]] = []

    def square(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return batch[:, 0] ** 2

    out = predict_tiled(image, square, tile=64, overlap=16, multiple=16, batch_size=3)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, image**2)
    assert len({shape[1:] for shape in calls}) == 1
    assert all(shape[0] <= 3 and shape[1] == 1 and max(shape[2:]) <= 64 for shape in calls)
    assert sum(shape[0] for shape in calls) == len(tile_windows((160, 240), 64, 16, 16))


def test_predict_tiled_single_call_when_frame_fits() -> None:
    calls: list[tuple[int, ...]] = []

    def negate(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return -batch[:, 0]

    image = np.ones((40, 50), np.float32)
    np.testing.assert_array_equal(
        predict_tiled(image, negate, tile=2048, overlap=64, multiple=16), -image
    )
    assert calls == [(1, 1, 48, 64)]


def test_read_frame_decodes_the_given_bytes_not_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "frame.tif"
    first = np.arange(64, dtype=np.uint16).reshape(8, 8)
    tifffile.imwrite(path, first)
    data = path.read_bytes()
    tifffile.imwrite(path, first[::-1])  # the file is rewritten after it was read and hashed
    np.testing.assert_array_equal(read_frame(path, data=data).image, first)
    np.testing.assert_array_equal(read_frame(path).image, first[::-1])
    with pytest.raises(FrameError, match="empty file"):
        read_frame(path, data=b"")
    with pytest.raises(FrameError):
        read_frame(path, data=b"not a tiff at all")


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_read_frame_views_uncompressed_pixels_in_the_given_bytes(
    tmp_path: Path, compression: str | None
) -> None:
    path = tmp_path / "frame.tif"
    image = np.arange(96 * 80, dtype=np.uint16).reshape(96, 80)
    tifffile.imwrite(path, image, compression=compression, rowsperstrip=16)
    data = path.read_bytes()
    frame = read_frame(path, data=data)
    np.testing.assert_array_equal(frame.image, image)
    in_place = np.shares_memory(frame.image, np.frombuffer(data, np.uint8))
    assert in_place == (compression is None)  # no copy of the pixels when none is needed
