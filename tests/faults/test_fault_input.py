"""Bad input in the acquisition folder: each bad file gives one ``failed`` row with a clear
error naming it, the daemon neither crashes nor hangs, and good frames after it go through."""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from faultkit import count_rows, tiff_bytes, wait_for
from framekit import frame_rows, write_renamed


def tiff_of(image: np.ndarray, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def claiming_dimensions(width: int, height: int) -> bytes:
    """A 32 x 32 frame whose header is patched to claim ``width`` x ``height`` pixels."""
    data = bytearray(tiff_bytes(1))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tags = tif.pages.first.tags
        for name, value in (("ImageWidth", width), ("ImageLength", height)):
            tag = tags[name]
            fmt = {3: "<H", 4: "<I"}[int(tag.dtype)]
            struct.pack_into(fmt, data, tag.valueoffset, value)
    return bytes(data)


def with_nan(dtype: str, value: float) -> bytes:
    image = np.ones((32, 32), dtype)
    image[3, 5] = value
    return tiff_of(image)


# name -> (bytes, text expected in the recorded error)
BAD = {
    "zero_bytes.tif": (b"", "empty file (0 bytes)"),
    "truncated.tif": (tiff_bytes(2)[:200], "truncated file"),
    "rgb.tif": (tiff_of(np.zeros((32, 32, 3), np.uint8), photometric="rgb"), "RGB frames"),
    "nan.tif": (with_nan("float32", np.nan), "NaN or infinite"),
    "inf.tif": (with_nan("float64", -np.inf), "NaN or infinite"),
    "huge_header.tif": (claiming_dimensions(100_000, 100_000), "exceeds the limit"),
    "text.tif": (b"this is a text file, not a TIFF\n" * 20, "not a readable TIFF"),
    "bad_material.tif": (tiff_bytes(3, material="../../etc"), "is not a valid name"),
}


@pytest.mark.slow
def test_bad_files_fail_cleanly_and_good_frames_continue(
    make_daemon, acq: Path, db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = make_daemon()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "real.tif").write_bytes(tiff_bytes(4))
    good: list[Path] = []
    expected_errors: dict[Path, str] = {}

    def good_frame() -> None:
        path = acq / f"good_{len(good):02d}.tif"
        write_renamed(path, tiff_bytes(100 + len(good)))
        good.append(path)

    with caplog.at_level(logging.INFO):
        good_frame()
        for name, (data, error) in BAD.items():
            write_renamed(acq / name, data)
            expected_errors[acq / name] = error
            good_frame()
        # Reported complete, then deleted before a reader got to it (a name the watcher
        # ignores, so only this report reaches the daemon).
        gone = acq / "gone.dat"
        gone.write_bytes(tiff_bytes(5))
        gone.unlink()
        assert daemon.submit(gone)
        expected_errors[gone] = "cannot read"
        good_frame()
        # A link to a frame outside the watched folder is not followed.
        (acq / "link_out.tif").symlink_to(outside / "real.tif")
        good_frame()
        # Extreme but valid shapes are segmented.
        long = acq / "long.tif"
        write_renamed(long, tiff_of(np.arange(100_000, dtype=np.uint16).reshape(1, -1)))
        good.append(long)
        good_frame()

        total = len(good) + len(expected_errors)
        assert wait_for(lambda: count_rows(db_path) >= total, 60), count_rows(db_path)
        assert wait_for(lambda: "ignoring symbolic link" in caplog.text, 10)
        assert daemon.wait_idle(30) and daemon.healthy()

    rows = {Path(r["source_path"]): r for r in frame_rows(db_path)}
    assert len(rows) == total and set(rows) == set(good) | set(expected_errors)
    for path, error in expected_errors.items():
        row = rows[path]
        assert row["status"] == "failed", path
        assert error in row["error"] and str(path) in row["error"], row["error"]
    for path in good:
        assert rows[path]["status"] == "done", rows[path]["error"]
    assert (rows[long]["height"], rows[long]["width"]) == (1, 100_000)
    assert daemon.stats.failed == len(expected_errors)
    assert rows[acq / "bad_material.tif"]["material"] == "Au"  # the configured default
