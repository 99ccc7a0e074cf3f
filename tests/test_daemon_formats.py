"""The daemon on microscope formats other than TIFF: stacks frame by frame, files still
being written in place, files without an image. Real watcher, ZeroMQ on 127.0.0.1, SQLite."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import mrcfile
import numpy as np
import pytest
from framekit import frame_rows, write_renamed

from temseg.daemon import Daemon
from temseg.daemon.events import TERMINAL, FrameEvent
from temseg.store import connect, record_frame
from temseg.stream import StreamMessage, Subscriber

SIZE = 64  # pixels
SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "formats"


def mrc_bytes(frames: int, seed: int = 0, voxel_a: tuple[float, float, float] = (1, 2, 1)) -> bytes:
    """An MRC image stack of ``frames`` x SIZE x SIZE int16, pixels 0.1 nm wide, 0.2 nm tall."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4000, (frames, SIZE, SIZE)).astype(np.int16)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(data if frames > 1 else data[0])
            if frames > 1:
                mrc.set_image_stack()
            mrc.voxel_size = voxel_a
        return path.read_bytes()


def velox_bytes(frames: int, seed: int = 0) -> bytes:
    """A Velox EMD with one image signal of ``frames`` frames, 0.05 nm pixels."""
    rng = np.random.default_rng(seed)
    meta = {"BinaryResult": {"PixelSize": {"width": "5e-11", "height": "5e-11"},
                             "PixelUnitX": "m", "PixelUnitY": "m"}}  # fmt: skip
    text = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    column = np.zeros((4096, frames), np.uint8)
    column[: len(text), :] = text[:, None]
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        group = f.create_group("Data/Image/0")
        group["Data"] = rng.integers(0, 4000, (SIZE, SIZE, frames)).astype(np.uint16)
        group["Metadata"] = column
    return buffer.getvalue()


def connected(daemon: Daemon, acq: Path) -> Subscriber:
    """A subscriber proven connected: probe frames are written until one is received."""
    assert daemon.bound_url is not None
    sub = Subscriber(daemon.bound_url, timeout_ms=200)
    (acq / "probes").mkdir(exist_ok=True)
    for i in range(20):
        probe = acq / "probes" / f"probe_{i}.mrc"
        write_renamed(probe, mrc_bytes(1, seed=1000 + i))
        if messages_for(sub, probe, 1, timeout_s=2.0, check=False):
            return sub
    sub.close()
    raise AssertionError("subscriber never received a probe frame")


def messages_for(
    sub: Subscriber, path: Path, count: int, timeout_s: float = 30.0, check: bool = True
) -> list[StreamMessage]:
    """The next ``count`` messages about ``path`` (others are skipped)."""
    got: list[StreamMessage] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        message = sub.receive(timeout_ms=200)
        if message is not None and message.header.get("source") == str(path):
            got.append(message)
    if check:
        assert len(got) == count, f"{len(got)} of {count} messages for {path}"
    return got


def rows_for(db: Path, path: Path) -> list[dict[str, Any]]:
    return sorted(
        (r for r in frame_rows(db) if r["source_path"] == str(path)),
        key=lambda r: r["frame_index"],
    )


def rows_when_recorded(
    db: Path, path: Path, daemon: Any, count: int, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """:func:`rows_for` once ``count`` rows are there (or ``timeout_s`` has passed) and the
    daemon is idle."""
    deadline = time.monotonic() + timeout_s
    while len(rows_for(db, path)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.wait_idle(20)
    return rows_for(db, path)


def test_stack_published_and_recorded_frame_by_frame(
    make_daemon: Any, acq: Path, db_path: Path
) -> None:
    daemon = make_daemon()
    sub = connected(daemon, acq)
    events: list[FrameEvent] = []
    daemon.events.subscribe(events.append, inline=True)
    movie = acq / "movie.mrc"
    data = mrc_bytes(3)
    write_renamed(movie, data)
    messages = messages_for(sub, movie, 3)
    sub.close()
    assert daemon.wait_idle(20)
    mine = [e for e in events if e.path == movie]
    assert len({e.ticket for e in mine}) == 1  # accepted once
    for index in range(3):  # each frame has its own events and one outcome
        kinds = [e.kind for e in mine if e.frame_index == index]
        assert kinds[0] == "received" and kinds[-1] == "published"
        assert sum(k in TERMINAL for k in kinds) == 1
    rows = rows_for(db_path, movie)
    assert [r["frame_index"] for r in rows] == [0, 1, 2]
    digest = hashlib.sha256(data).hexdigest()
    for message, row in zip(messages, rows, strict=True):
        header = message.header
        assert message.topic == "temseg.mask.Au"
        assert (header["frame_index"], header["n_frames"]) == (row["frame_index"], 3)
        assert header["frame_id"] == row["id"] and header["sha256"] == digest
        assert header["shape"] == [SIZE, SIZE]
        assert header["pixel_nm_yx"] == pytest.approx([0.2, 0.1])
        assert header["pixel_nm"] == pytest.approx((0.2 * 0.1) ** 0.5)
        assert (row["status"], row["n_frames"], row["sha256"]) == ("done", 3, digest)
        assert (row["pixel_nm_y"], row["pixel_nm_x"]) == pytest.approx((0.2, 0.1))


def test_stack_under_a_small_decode_budget_gets_one_mask_per_frame(
    make_daemon: Any, acq: Path, db_path: Path, tmp_path: Path
) -> None:
    """The decoded-bytes budget reads TIFF headers only: an MRC stack larger than the
    whole budget is decoded (never failed for it), and each frame has its own mask."""
    masks = tmp_path / "masks"
    daemon = make_daemon(masks=masks, max_decoded_bytes=1024)
    movie = acq / "movie.mrc"
    data = mrc_bytes(3, seed=11)
    assert len(data) > 1024
    write_renamed(movie, data)
    rows = rows_when_recorded(db_path, movie, daemon, 3)
    assert [(r["frame_index"], r["status"]) for r in rows] == [
        (0, "done"),
        (1, "done"),
        (2, "done"),
    ]
    expected = [masks / f"movie.mrc.{k}.mask.tif" for k in range(3)]
    assert [Path(r["mask_path"]) for r in rows] == expected
    assert all(p.is_file() for p in expected)


def test_stack_interrupted_half_way_is_finished_after_a_restart(
    make_daemon: Any, acq: Path, db_path: Path
) -> None:
    movie = acq / "movie.mrc"
    data = mrc_bytes(3, seed=5)
    movie.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    engine = connect(str(db_path))
    for index in (0, 1):  # what a daemon stopped after two frames left behind
        record_frame(
            engine,
            source_path=str(movie),
            sha256=digest,
            size_bytes=len(data),
            status="done",
            frame_index=index,
            n_frames=3,
        )
    engine.dispose()
    daemon = make_daemon()
    rows = rows_when_recorded(db_path, movie, daemon, 3)
    assert [(r["frame_index"], r["status"]) for r in rows] == [
        (0, "done"),
        (1, "done"),
        (2, "done"),
    ]
    assert rows[2]["height"] == SIZE  # segmented now; the first two were not done again
    assert rows[0]["height"] is None and rows[1]["height"] is None


@pytest.mark.parametrize("polling", [False, True])
def test_hdf5_written_in_place_is_retried_until_complete(
    make_daemon: Any, acq: Path, db_path: Path, polling: bool
) -> None:
    daemon = make_daemon(polling=polling, poll_interval_s=0.1, stable_s=0.3)
    sub = connected(daemon, acq)
    events: list[FrameEvent] = []
    daemon.events.subscribe(events.append, inline=True)
    path = acq / "insitu.emd"
    data = velox_bytes(2)
    half = len(data) // 2
    path.write_bytes(data[:half])  # the writer pauses half way: the daemon sees it complete
    time.sleep(1.5)
    assert not any(r["status"] == "failed" for r in rows_for(db_path, path))
    with path.open("r+b") as fh:  # and finishes the file in place
        fh.seek(half)
        fh.write(data[half:])
    messages = messages_for(sub, path, 2)
    sub.close()
    assert daemon.wait_idle(20)
    assert sorted(m.header["frame_index"] for m in messages) == [0, 1]
    rows = rows_for(db_path, path)
    assert [(r["frame_index"], r["status"]) for r in rows] == [(0, "done"), (1, "done")]
    assert {r["sha256"] for r in rows} == {hashlib.sha256(data).hexdigest()}
    kinds = [e.kind for e in events if e.path == path]
    assert "deferred" in kinds and "failed" not in kinds
    deferred = next(e for e in events if e.kind == "deferred")
    assert "insitu.emd" in (deferred.error or "") and "read again" in (deferred.error or "")


def test_file_without_an_image_fails_alone(make_daemon: Any, acq: Path, db_path: Path) -> None:
    daemon = make_daemon()
    sub = connected(daemon, acq)
    spectrum = acq / "eels.emd"
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        group = f.create_group("data/eels")
        group.attrs["emd_group_type"] = 1
        group["data"] = np.arange(512.0)
    write_renamed(spectrum, buffer.getvalue())
    good = acq / "good.mrc"
    write_renamed(good, mrc_bytes(1, seed=7))
    (error,) = messages_for(sub, spectrum, 1)
    (done,) = messages_for(sub, good, 1)
    sub.close()
    assert error.is_error and "eels.emd: no 2-D image" in error.header["error"]
    assert not done.is_error
    (row,) = rows_for(db_path, spectrum)
    assert (row["status"], row["frame_index"]) == ("failed", 0)
    assert "no 2-D image" in row["error"]


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/formats absent")
def test_default_patterns_take_dm_and_ser_but_not_emi(
    make_daemon: Any, acq: Path, db_path: Path
) -> None:
    daemon = make_daemon()
    names = [
        "test_STEM_image.dm3",
        "128x128_TEM_acquire-sum1.emi",
        "128x128_TEM_acquire-sum1_1.ser",
    ]
    for name in names:  # the .emi first, as TIA writes it
        shutil.copyfile(SAMPLES / name, acq / f".{name}.part")
        (acq / f".{name}.part").rename(acq / name)
    deadline = time.monotonic() + 30
    while len(frame_rows(db_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.wait_idle(20)
    by_name = {Path(r["source_path"]).name: r for r in frame_rows(db_path)}
    assert set(by_name) == {"test_STEM_image.dm3", "128x128_TEM_acquire-sum1_1.ser"}
    dm3, ser = by_name["test_STEM_image.dm3"], by_name["128x128_TEM_acquire-sum1_1.ser"]
    assert (dm3["status"], dm3["height"], dm3["pixel_nm"]) == (
        "done",
        68,
        pytest.approx(0.2485, 1e-3),
    )
    # 21.5 nm pixels are 430 times the bundled model's: refused with the sizes, not segmented
    assert ser["status"] == "failed" and "21.47" in ser["error"] and "would make" in ser["error"]
