"""Hostile and careless input against a running daemon: links swapped in after listing,
FIFOs, huge and sparse files, resampling and decompression bombs, file names that are
not UTF-8 or hold line breaks, colliding mask names, a second daemon, a deleted database."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from faultkit import tiff_bytes, wait_for
from framekit import frame_rows, write_renamed

from temseg.config import ConfigError, Settings
from temseg.daemon import Daemon, run_daemon

SECRET = b"root:$6$not-a-real-hash:19000:0:99999:7:::\n"


def rows_for(db: Path, name: str) -> list[dict]:
    return [r for r in frame_rows(db) if r["source_path"].endswith(name)]


def test_a_link_swapped_in_after_listing_is_refused_unread(
    make_daemon, acq: Path, db_path: Path, tmp_path: Path
) -> None:
    daemon = make_daemon()
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    listed = acq / "newest.tif"
    listed.symlink_to(secret)  # as if swapped between the listing and the read
    assert daemon.submit(listed)
    write_renamed(acq / "good.tif", tiff_bytes(1))
    assert wait_for(lambda: len(frame_rows(db_path)) >= 2, 60)
    (row,) = rows_for(db_path, "newest.tif")
    assert row["status"] == "failed" and "symbolic link" in row["error"]
    assert row["sha256"] != hashlib.sha256(SECRET).hexdigest()
    assert "root" not in row["error"].replace(str(tmp_path), "")
    assert rows_for(db_path, "good.tif")[0]["status"] == "done"


def test_a_fifo_fails_at_once_and_does_not_wedge_the_readers(
    make_daemon, acq: Path, db_path: Path
) -> None:
    daemon = make_daemon()
    fifos = [acq / f"wedge_{i}.tif" for i in range(4)]  # more than there are readers
    for fifo in fifos:
        os.mkfifo(fifo)
        assert daemon.submit(fifo)
    write_renamed(acq / "good.tif", tiff_bytes(2))
    assert wait_for(lambda: len(frame_rows(db_path)) >= 5, 60)
    for fifo in fifos:
        (row,) = rows_for(db_path, fifo.name)
        assert row["status"] == "failed" and "not a regular file" in row["error"]
    assert rows_for(db_path, "good.tif")[0]["status"] == "done"
    assert daemon.healthy()


def test_files_above_max_file_bytes_get_a_failed_row_unread(
    make_daemon, acq: Path, db_path: Path
) -> None:
    make_daemon(max_file_bytes=1_000_000)
    sparse = acq / "sparse.tif"
    with sparse.open("wb") as fh:
        fh.truncate(64 << 30)  # 64 GiB that take no disk: reading it whole was a MemoryError
    write_renamed(acq / "good.tif", tiff_bytes(3))
    assert wait_for(lambda: len(frame_rows(db_path)) >= 2, 60)
    (row,) = rows_for(db_path, "sparse.tif")
    assert row["status"] == "failed" and "exceeds max_file_bytes (1000000 bytes)" in row["error"]


def test_a_frame_claiming_huge_pixels_is_refused_before_resampling(
    make_daemon, acq: Path, db_path: Path
) -> None:
    make_daemon(max_pixels=4096 * 4096)
    buffer = io.BytesIO()
    image = np.random.default_rng(4).integers(0, 4000, (128, 128), dtype=np.uint16)
    tifffile.imwrite(buffer, image, metadata={"pixel_nm": 2.0})  # 40 x the model's 0.05
    write_renamed(acq / "claims_2nm.tif", buffer.getvalue())
    write_renamed(acq / "good.tif", tiff_bytes(5))
    assert wait_for(lambda: len(frame_rows(db_path)) >= 2, 60)
    (row,) = rows_for(db_path, "claims_2nm.tif")
    assert row["status"] == "failed" and "above max_pixels" in row["error"]


def test_a_decompression_bomb_above_the_budget_fails(make_daemon, acq: Path, db_path: Path) -> None:
    make_daemon(max_decoded_bytes=64 * 2**20)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((8192, 8192), np.uint16), compression="zlib")
    assert len(buffer.getvalue()) < 1_000_000  # 128 MiB of pixels in under a megabyte
    write_renamed(acq / "bomb.tif", buffer.getvalue())
    write_renamed(acq / "good.tif", tiff_bytes(6))
    assert wait_for(lambda: len(frame_rows(db_path)) >= 2, 60)
    (row,) = rows_for(db_path, "bomb.tif")
    assert row["status"] == "failed" and "above max_decoded_bytes" in row["error"]


def test_non_utf8_and_line_break_names_are_recorded_once_and_logged_escaped(
    make_daemon, acq: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    latin1 = os.fsdecode(bytes(acq) + b"/caf\xe9.tif")
    forged = acq / "x.tif\nCRITICAL temseg.daemon: FORGED.tif"
    with caplog.at_level(logging.DEBUG, logger="temseg"):
        daemon = make_daemon()
        write_renamed(Path(latin1), tiff_bytes(7))
        write_renamed(forged, tiff_bytes(8))
        assert wait_for(lambda: len(frame_rows(db_path)) >= 2, 60)
        assert daemon.wait_idle(30)
        daemon.stop()
        make_daemon().wait_idle(30)  # a restart finds both recorded already
    rows = frame_rows(db_path)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done"}
    assert {r["source_path"] for r in rows} == {
        f"{acq}/caf\\xe9.tif",
        f"{acq}/x.tif\\x0aCRITICAL temseg.daemon: FORGED.tif",
    }
    for record in caplog.records:
        assert "\n" not in record.getMessage()


def test_scan_tif_and_scan_tiff_get_their_own_masks(
    make_daemon, acq: Path, db_path: Path, tmp_path: Path
) -> None:
    make_daemon(masks=tmp_path / "masks")
    write_renamed(acq / "scan.tif", tiff_bytes(9))
    write_renamed(acq / "scan.tiff", tiff_bytes(10))
    assert wait_for(lambda: len(frame_rows(db_path)) >= 2, 60)
    masks = {r["source_path"]: r["mask_path"] for r in frame_rows(db_path)}
    assert len(set(masks.values())) == 2
    for mask in masks.values():
        assert Path(mask).is_file()


def test_a_second_daemon_on_the_same_database_refuses_to_start(
    make_daemon, acq: Path, db_path: Path
) -> None:
    make_daemon()
    second = Daemon(Settings(watch=acq, db=str(db_path), publish="tcp://127.0.0.1:0", threads=1))
    with pytest.raises(ConfigError, match="in use by another temseg daemon"):
        second.start()
    second.stop()


def test_a_deleted_database_stops_the_daemon_with_a_clear_error(
    acq: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        watch=acq, db=str(db_path), publish="tcp://127.0.0.1:0", threads=1, stable_s=0.3
    )
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_daemon(settings, stop_event=stop, ready=ready)
        except BaseException as exc:  # what the CLI turns into one line and exit 1
            failure.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        assert ready.wait(60)
        write_renamed(acq / "before.tif", tiff_bytes(11))
        assert wait_for(lambda: len(frame_rows(db_path)) == 1, 60)
        db_path.unlink()
        runner.join(30)
        assert not runner.is_alive()  # it stopped on its own, with the reason
        assert failure and "was deleted while the daemon ran" in str(failure[0])
        assert str(db_path) in str(failure[0])
        assert not db_path.exists()  # and did not make a new, empty database either
    finally:
        stop.set()
        runner.join(30)


def test_the_ready_line_says_whether_curve_is_on(
    make_daemon, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="temseg.daemon"):
        make_daemon()
    assert any(
        r.getMessage().startswith("ready ") and " curve=off " in r.getMessage()
        for r in caplog.records
    )
