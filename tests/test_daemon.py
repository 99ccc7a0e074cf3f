"""The daemon end to end: real watchdog observer, ZeroMQ on 127.0.0.1, SQLite files, TIFFs."""

from __future__ import annotations

import gc
import hashlib
import io
import logging
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from framekit import fingerprint, frame_rows, write_renamed, write_slowly
from typer.testing import CliRunner

from temseg.cli import app
from temseg.config import ConfigError, Settings
from temseg.daemon import Daemon, Notifier
from temseg.engine import load_engine
from temseg.inference import CPU_TILE, predict_probability
from temseg.model import build_unet, load_bundle, save_bundle
from temseg.store import (
    connect,
    get_frame,
    promote_model,
    record_calibration,
    register_model,
    status_summary,
)
from temseg.stream import StreamMessage, Subscriber

SIZE = 64  # pixels


# ---------------------------------------------------------------- helpers


def tiff_bytes(seed: int, *, material: str | None = None, rgb: bool = False) -> bytes:
    """A small TIFF frame in memory, with ``material`` in its ImageDescription JSON."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    if rgb:
        tifffile.imwrite(buffer, rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    else:
        image = rng.integers(0, 4000, (SIZE, SIZE), dtype=np.uint16)
        metadata = {"material": material} if material else {}
        tifffile.imwrite(buffer, image, metadata=metadata)
    return buffer.getvalue()


@contextmanager
def store(db: Path | str) -> Iterator[Any]:
    """A temseg.store engine on ``db``, disposed on exit."""
    engine = connect(str(db))
    try:
        yield engine
    finally:
        engine.dispose()


def row_for(db: Path | str, path: Path) -> dict[str, Any]:
    matches = [r for r in frame_rows(db) if r["source_path"] == str(path)]
    assert len(matches) == 1, matches
    return matches[0]


def receive_for(sub: Subscriber, path: Path, timeout_s: float = 20.0) -> StreamMessage:
    """The next message about ``path`` (others are skipped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = sub.receive(timeout_ms=200)
        if message is not None and message.header.get("source") == str(path):
            return message
    raise AssertionError(f"no message for {path} within {timeout_s} s")


def receive_all(sub: Subscriber, paths: list[Path], timeout_s: float = 20.0) -> dict[Path, Any]:
    """The messages about each of ``paths``, whatever their order."""
    wanted = {str(p): p for p in paths}
    got: dict[Path, StreamMessage] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < len(wanted):
        assert time.monotonic() < deadline, (
            f"missing messages for {set(wanted) - set(map(str, got))}"
        )
        message = sub.receive(timeout_ms=200)
        if message is not None and message.header.get("source") in wanted:
            got[wanted[message.header["source"]]] = message
    return got


def subscribe(daemon: Daemon, acq: Path) -> Subscriber:
    """A subscriber proven connected: probe frames are written until one is received."""
    assert daemon.bound_url is not None
    sub = Subscriber(daemon.bound_url, timeout_ms=200)
    probes = acq / "probes"
    probes.mkdir(exist_ok=True)
    for i in range(20):
        path = probes / f"probe_{i}.tif"
        write_renamed(path, tiff_bytes(10_000 + i))
        try:
            receive_for(sub, path, timeout_s=2.0)
            return sub
        except AssertionError:
            continue
    sub.close()
    raise AssertionError("subscriber never received a probe frame")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny bundles with different weights, CdSe threshold 0.6, default 0.5."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        meta = {"default_threshold": 0.5, "thresholds": {"CdSe": 0.6}, "materials": ["Au", "CdSe"]}
        out[name] = save_bundle(build_unet(), meta, root / name)
    return out


def calibrate_cdse(engine: Any, bundle: Path, threshold: float) -> None:
    """Record a CdSe calibration of ``bundle`` at ``threshold``; other figures are placeholders."""
    record_calibration(
        engine,
        material="CdSe",
        model_id=bundle_id(bundle),
        threshold=threshold,
        precision=0.9,
        recall=0.8,
        dice=0.85,
        n_images=4,
        curve={},
        plot_path=None,
        criterion="max_f1",
    )


def bundle_id(path: Path) -> str:
    import json

    return str(json.loads((path / "model.json").read_text())["model_id"])


@pytest.fixture
def make_daemon(make_daemon: Any, bundles: dict[str, Path]) -> Any:
    """The shared daemon factory, serving test bundle "a" unless a test names another model."""

    def make(db_busy_timeout_ms: int = 5000, **overrides: Any) -> Daemon:
        overrides.setdefault("model", str(bundles["a"]))
        return make_daemon(db_busy_timeout_ms, **overrides)

    return make


# ---------------------------------------------------------------- tests


def test_frames_segmented_published_recorded_and_folder_untouched(
    make_daemon, acq: Path, db_path: Path, bundles: dict[str, Path], tmp_path: Path
) -> None:
    old = acq / "old.tif"
    old.write_bytes(tiff_bytes(1))
    untouched = {old: fingerprint(old)}
    masks = tmp_path / "masks"
    daemon = make_daemon(masks=masks)
    sub = subscribe(daemon, acq)
    for probe in (acq / "probes").iterdir():
        untouched[probe] = fingerprint(probe)

    slow = acq / "slow.tif"
    write_slowly(slow, tiff_bytes(2))
    untouched[slow] = fingerprint(slow)
    (acq / "CdSe").mkdir()
    time.sleep(0.2)  # let inotify add the new folder's watch
    renamed = acq / "CdSe" / "renamed.tif"
    write_renamed(renamed, tiff_bytes(3, material="CdSe"))
    untouched[renamed] = fingerprint(renamed)

    messages = receive_all(sub, [slow, renamed])
    sub.close()
    assert daemon.wait_idle(20)
    daemon.stop()

    model_id = bundle_id(bundles["a"])
    for path, material, threshold in ((slow, "Au", 0.5), (renamed, "CdSe", 0.6)):
        header, mask = messages[path].header, messages[path].mask
        row = row_for(db_path, path)
        assert messages[path].topic == f"temseg.mask.{material}"
        assert (row["status"], row["material"], row["model_id"]) == ("done", material, model_id)
        assert header["frame_id"] == row["id"] and header["seq"] == row["seq"]
        assert header["threshold"] == row["threshold"] == threshold
        assert header["n_particles"] == row["n_particles"]
        timing = header["timing_ms"]
        assert min(timing[step] for step in ("read", "infer", "segment")) > 0
        parts = timing["read"] + timing["infer"] + timing["segment"]
        assert timing["total"] == pytest.approx(parts, abs=2e-3)  # each rounded to 1 us
        assert mask is not None and mask.shape == (SIZE, SIZE) == (row["height"], row["width"])
        with store(db_path) as engine:
            record = get_frame(engine, row["id"])
        assert record is not None and len(record.particles) == header["n_particles"]
        written = Path(row["mask_path"])
        assert written == masks / f"{path.relative_to(acq)}.mask.tif"
        np.testing.assert_array_equal(tifffile.imread(written), mask)
    assert row_for(db_path, old)["status"] == "done"  # the backlog

    # The published mask is the mask `temseg segment` writes for the same frame.
    offline = tmp_path / "offline"
    result = CliRunner().invoke(
        app,
        ["segment", str(slow), str(renamed), "--model", str(bundles["a"]), "--out", str(offline)],
    )
    assert result.exit_code == 0, result.output
    for path in (slow, renamed):
        offline_mask = tifffile.imread(offline / f"{path.stem}_mask.tif")
        np.testing.assert_array_equal(offline_mask, messages[path].mask)

    for path, print_ in untouched.items():
        assert fingerprint(path) == print_, path
    present = {p for p in acq.rglob("*") if p.is_file()}
    assert present == set(untouched)


def test_bad_frames_recorded_as_failed_and_published_on_error_topic(
    make_daemon, acq: Path, db_path: Path
) -> None:
    daemon = make_daemon()
    sub = subscribe(daemon, acq)
    empty, corrupt, rgb, good = (acq / n for n in ("empty.tif", "corrupt.tif", "rgb.tif", "ok.tif"))
    empty.write_bytes(b"")
    write_renamed(corrupt, tiff_bytes(4)[:200])  # truncated: header, no pixel data
    write_renamed(rgb, tiff_bytes(5, rgb=True))
    vanished = acq / "vanished.tif"  # reported complete, deleted before it could be read
    assert daemon.submit(vanished)
    write_renamed(good, tiff_bytes(6))

    expected = {
        empty: "empty file",
        corrupt: "truncated",
        rgb: "RGB frames are not supported",
        vanished: "cannot read",
    }
    messages = receive_all(sub, [*expected, good])
    for path, text in expected.items():
        message = messages[path]
        assert message.topic == "temseg.error" and message.is_error
        assert text in message.header["error"]
        row = row_for(db_path, path)
        assert row["status"] == "failed" and text in row["error"]
        assert row["n_particles"] is None and row["seq"] == message.header["seq"]
    assert messages[good].topic == "temseg.mask.Au"  # the daemon kept going
    assert row_for(db_path, good)["status"] == "done"
    sub.close()
    assert daemon.stats.failed == 4


def test_instrument_recorded_on_every_frame(make_daemon, acq: Path, db_path: Path) -> None:
    daemon = make_daemon(instrument="titan-krios 2")
    sub = subscribe(daemon, acq)
    good, bad = acq / "good.tif", acq / "bad.tif"
    write_renamed(good, tiff_bytes(31))
    write_renamed(bad, b"not a TIFF")
    receive_all(sub, [good, bad])  # published after being recorded
    sub.close()
    assert row_for(db_path, good)["status"] == "done"
    assert row_for(db_path, bad)["status"] == "failed"
    rows = frame_rows(db_path)  # with the frame subscribe() sent to check the subscription
    assert {r["instrument"] for r in rows} == {"titan-krios 2"}
    with store(db_path) as engine:
        by_instrument = status_summary(engine)["by_instrument"]
    assert by_instrument == {"titan-krios 2": {"done": len(rows) - 1, "failed": 1}}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, db_path: Path) -> Path | str:
    """The daemon's database: the SQLite file ``db_path``, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return db_path
    url: str = request.getfixturevalue("pg_url")
    return url


def test_backlog_oldest_first_materials_and_restart(
    make_daemon, acq: Path, db_target: Path | str
) -> None:
    (acq / "CdSe").mkdir()
    frames = {  # path -> (bytes, expected material); listed oldest first
        acq / "z_default.tif": (tiff_bytes(7), "Au"),
        acq / "CdSe" / "by_rule.tif": (tiff_bytes(8), "CdSe"),
        acq / "CdSe" / "by_sidecar.tif": (tiff_bytes(9), "Pt"),
        acq / "a_metadata.tif": (tiff_bytes(10, material="Pd"), "Pd"),
    }
    (acq / "CdSe" / "by_sidecar.json").write_text('{"material": "Pt"}')
    for age, (path, (data, _)) in enumerate(frames.items()):
        path.write_bytes(data)
        os.utime(path, ns=(1_600_000_000_000_000_000 + age, 1_600_000_000_000_000_000 + age))
    rules = {"CdSe/**": "CdSe"}

    db = str(db_target)
    daemon = make_daemon(db=db, folder_rules=rules, batch_size=1, queue_size=1)  # back-pressure
    assert daemon.wait_idle(30)
    daemon.stop()
    rows = frame_rows(db_target)
    assert [r["source_path"] for r in rows] == [str(p) for p in frames]
    assert [r["material"] for r in rows] == [m for _, m in frames.values()]
    assert daemon.stats.backlog == 4 and daemon.stats.done == 4

    changed = acq / "a_metadata.tif"
    changed.write_bytes(tiff_bytes(11, material="Pd"))  # new content at the same path
    again = make_daemon(db=db, folder_rules=rules)
    assert again.wait_idle(30)
    again.stop()
    assert again.stats.skipped == 3 and again.stats.done == 1
    rows = frame_rows(db_target)
    assert len(rows) == 5 and rows[-1]["source_path"] == str(changed)
    assert {r["sha256"] for r in rows if r["source_path"] == str(changed)} == {
        hashlib.sha256(tiff_bytes(10, material="Pd")).hexdigest(),
        hashlib.sha256(tiff_bytes(11, material="Pd")).hexdigest(),
    }


def test_polling_daemon_reads_slowly_written_frame_once_complete(
    make_daemon, acq: Path, db_path: Path
) -> None:
    daemon = make_daemon(polling=True, poll_interval_s=0.1, stable_s=0.5)
    sub = subscribe(daemon, acq)
    frame = acq / "on_share.tif"
    write_slowly(frame, tiff_bytes(19), chunks=5, pause_s=0.2)
    assert receive_for(sub, frame).header["n_particles"] is not None
    sub.close()
    assert daemon.wait_idle(20)
    row = row_for(db_path, frame)  # exactly one row: never read half-written
    assert row["status"] == "done" and row["size_bytes"] == frame.stat().st_size


def test_threshold_follows_latest_calibration_live(
    make_daemon, acq: Path, db_target: Path | str, bundles: dict[str, Path]
) -> None:
    daemon = make_daemon(db=str(db_target))
    sub = subscribe(daemon, acq)
    first = acq / "first.tif"
    write_renamed(first, tiff_bytes(12, material="CdSe"))
    header = receive_for(sub, first).header
    assert (header["threshold"], header["threshold_source"]) == (0.6, "bundle")

    with store(db_target) as engine:
        calibrate_cdse(engine, bundles["a"], threshold=0.35)
    second = acq / "second.tif"
    write_renamed(second, tiff_bytes(13, material="CdSe"))
    header = receive_for(sub, second).header
    sub.close()
    assert (header["threshold"], header["threshold_source"]) == (0.35, "calibration")
    assert row_for(db_target, second)["threshold"] == 0.35


def test_promoted_model_used_live_and_broken_bundle_rejected(
    make_daemon,
    acq: Path,
    db_path: Path,
    bundles: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    id_a, id_b = bundle_id(bundles["a"]), bundle_id(bundles["b"])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    with store(db_path) as engine:
        register_model(engine, id_a, "a", str(bundles["a"]), {})
        register_model(engine, id_b, "b", str(bundles["b"]), {})
        register_model(engine, "broken0000000000", "broken", str(broken), {})
        promote_model(engine, id_a)

    daemon = make_daemon(model=None)
    assert daemon.model is not None and daemon.model.model_id == id_a
    served_first = weakref.ref(daemon.model)
    sub = subscribe(daemon, acq)
    with store(db_path) as engine:
        promote_model(engine, id_b)
    one = acq / "one.tif"
    write_renamed(one, tiff_bytes(14))
    header = receive_for(sub, one).header
    assert (header["model_id"], header["model_source"]) == (id_b, "active")
    gc.collect()
    assert served_first() is None  # the swapped-out model and its engine were released

    with caplog.at_level(logging.ERROR, logger="temseg.daemon"), store(db_path) as engine:
        promote_model(engine, "broken0000000000")
        two = acq / "two.tif"
        write_renamed(two, tiff_bytes(15))
        header = receive_for(sub, two).header
    assert header["model_id"] == id_b  # the old model kept serving
    assert row_for(db_path, two)["status"] == "done"
    assert daemon.stats.model_rejects == 1
    assert any("model rejected" in r.getMessage() for r in caplog.records)

    with store(db_path) as engine:
        promote_model(engine, id_a)
    three = acq / "three.tif"
    write_renamed(three, tiff_bytes(16))
    assert receive_for(sub, three).header["model_id"] == id_a
    sub.close()


def test_frame_read_before_a_model_swap_is_prepared_again_for_the_new_model(
    make_daemon, acq: Path, db_path: Path, bundles: dict[str, Path], tmp_path: Path
) -> None:
    torch.manual_seed(2)
    coarse = save_bundle(  # another pixel size and normalisation than bundle "a"
        build_unet(),
        {"pixel_nm": 0.1, "normalisation": {"method": "minmax"}, "default_threshold": 0.5},
        tmp_path / "coarse",
    )
    id_a, id_coarse = bundle_id(bundles["a"]), bundle_id(coarse)
    with store(db_path) as engine:
        register_model(engine, id_a, "a", str(bundles["a"]), {})
        register_model(engine, id_coarse, "coarse", str(coarse), {})
        promote_model(engine, id_a)
    daemon = make_daemon(model=None, send_probability=True)
    sub = subscribe(daemon, acq)
    with store(db_path) as engine:
        promote_model(engine, id_coarse)  # seen by the inference thread after "one" is read
    image = np.random.default_rng(5).integers(0, 4000, (SIZE, SIZE), dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, metadata={"pixel_nm": 0.05})
    one = acq / "one.tif"
    write_renamed(one, buffer.getvalue())
    message = receive_for(sub, one)
    sub.close()
    assert message.header["model_id"] == id_coarse and message.header["pixel_nm"] == 0.05

    bundle = load_bundle(coarse)
    engine = load_engine(bundle, backend="onnxruntime", threads=1)
    expected = predict_probability(image, engine, bundle, pixel_nm=0.05)
    engine.close()
    assert message.probability is not None and expected.std() > 1e-4
    np.testing.assert_allclose(message.probability, expected, atol=2e-3)  # sent as float16


def test_locked_database_is_retried(
    make_daemon, acq: Path, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = make_daemon(db_busy_timeout_ms=50)
    sub = subscribe(daemon, acq)
    locker = sqlite3.connect(db_path, isolation_level=None)
    frame = acq / "while_locked.tif"
    try:
        with caplog.at_level(logging.WARNING, logger="temseg.daemon"):
            locker.execute("BEGIN EXCLUSIVE")
            write_renamed(frame, tiff_bytes(17))
            deadline = time.monotonic() + 20
            while not any("database busy" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the daemon never met the lock"
                time.sleep(0.05)
            assert all(r["source_path"] != str(frame) for r in frame_rows(db_path))
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert receive_for(sub, frame).topic == "temseg.mask.Au"
    sub.close()
    assert row_for(db_path, frame)["status"] == "done"


def test_settings_that_would_write_into_the_watched_folder_are_refused(
    acq: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="mask folder"):
        Daemon(Settings(watch=acq, masks=acq / "masks", db=str(tmp_path / "t.db")))
    with pytest.raises(ConfigError, match="database"):
        Daemon(Settings(watch=acq, db=f"sqlite:///{acq}/sub/t.db"))
    with pytest.raises(ConfigError, match="does not exist"):
        Daemon(Settings(watch=tmp_path / "missing", db=str(tmp_path / "t.db")))
    with pytest.raises(ConfigError, match="HEIGHTxWIDTH"):
        Daemon(Settings(watch=acq, db=str(tmp_path / "t.db"), warmup_shapes=["4096"]))
    with pytest.raises(ConfigError, match="segmenters"):
        Daemon(Settings(watch=acq, db=str(tmp_path / "t.db"), segmenters=-1))
    with pytest.raises(ConfigError, match="tile"):
        Daemon(Settings(watch=acq, db=str(tmp_path / "t.db"), tile=-1))
    with pytest.raises(ConfigError, match="instrument"):
        Daemon(Settings(watch=acq, db=str(tmp_path / "t.db"), instrument="x" * 65))
    with pytest.raises(ConfigError, match="max_subscribers"):
        Daemon(Settings(watch=acq, db=str(tmp_path / "t.db"), max_subscribers=0))
    with pytest.raises(ConfigError, match="min_particle_nm"):
        Daemon(Settings(watch=acq, db=str(tmp_path / "t.db"), min_particle_nm=-1.0))
    assert list(acq.iterdir()) == []


def test_sd_notify_on_abstract_socket() -> None:
    name = f"temseg-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "4000000"})
        assert notifier.enabled and notifier.watchdog_interval_s == 2.0
        assert notifier.ready("serving")
        lines = server.recv(4096).decode().splitlines()
        assert lines[0] == "READY=1" and "STATUS=serving" in lines
        assert notifier.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
    assert not Notifier({}).ready()  # outside systemd: a no-op


@pytest.mark.parametrize("segmenter_processes", [False, True])
def test_sigterm_drains_frame_in_flight_and_notifies_systemd(
    acq: Path, db_path: Path, bundles: dict[str, Path], segmenter_processes: bool
) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="temseg-"))  # short path: unix socket limit
    notify_path = sock_dir / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    env["TEMSEG_SEGMENTER_PROCESSES"] = str(segmenter_processes).lower()
    env["TEMSEG_METRICS"] = "127.0.0.1:0"
    command = [
        sys.executable,
        "-c",
        "from temseg.cli import app; app()",
        "daemon",
        "--watch", str(acq),
        "--db", str(db_path),
        "--publish", "tcp://127.0.0.1:0",
        "--model", str(bundles["a"]),
        "--log-level", "DEBUG",
        "--threads", "1",
    ]  # fmt: skip
    # A process group of its own: SIGTERM goes to all of its processes, as systemd sends it.
    proc = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in proc.stderr],
        daemon=True,  # type: ignore[union-attr]
    )
    reader.start()

    def wait_line(text: str) -> str:
        while True:
            line = lines.get(timeout=60)
            if text in line:
                return line

    try:
        received = []
        while "WATCHDOG=1" not in received:
            received += notify.recv(4096).decode().splitlines()
        assert received.index("READY=1") < received.index("WATCHDOG=1")
        wait_line(" ready ")
        frame = acq / "in_flight.tif"
        write_renamed(frame, tiff_bytes(18))
        wait_line(f"accepted path={frame}")
        os.killpg(proc.pid, signal.SIGTERM)  # while the frame is read, queued or inferred
        assert proc.wait(timeout=60) == 0
        notify.settimeout(0.5)
        with pytest.raises(TimeoutError):
            while True:
                received += notify.recv(4096).decode().splitlines()
        assert "STOPPING=1" in received
        assert received.index("READY=1") < received.index("STOPPING=1")
        row = row_for(db_path, frame)
        assert row["status"] == "done" and row["n_particles"] is not None, row["error"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        notify.close()
        notify_path.unlink(missing_ok=True)
        sock_dir.rmdir()


SIGNAL_TO_ANOTHER_THREAD = """
import signal, sys, threading, time
from pathlib import Path
from temseg.config import Settings
from temseg.daemon.run import serve

def send_when_serving():
    while not any(t.name == "temseg-recorder" for t in threading.enumerate()):
        time.sleep(0.05)
    time.sleep(2)  # the main thread waits for the stop signal by now
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread, not main

threading.Thread(target=send_when_serving, daemon=True).start()
serve(Settings(watch=Path(sys.argv[1]), db=sys.argv[2], publish="tcp://127.0.0.1:0", threads=1))
print("stopped")
"""


def test_sigterm_delivered_to_another_thread_stops_the_daemon(acq: Path, db_path: Path) -> None:
    # The kernel may hand a process's SIGTERM to any of its threads; Python runs the
    # handler in the main thread only, which must not sleep through it.
    run = subprocess.run(
        [sys.executable, "-c", SIGNAL_TO_ANOTHER_THREAD, str(acq), str(db_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == "stopped"


def test_cpu_engine_runs_one_frame_per_call(make_daemon, acq: Path, db_path: Path) -> None:
    from temseg.daemon.models import frames_per_call

    paths = [acq / f"backlog_{i}.tif" for i in range(6)]
    for i, path in enumerate(paths):
        path.write_bytes(tiff_bytes(100 + i))
    daemon = make_daemon(batch_size=4)
    assert daemon.model is not None and frames_per_call(daemon.model.engine, 4) == 1
    assert daemon.wait_idle(30)
    assert daemon.stats.done == len(paths)
    assert daemon.stats.largest_batch == 1 and daemon.stats.batches == len(paths)
    assert all(row_for(db_path, p)["n_particles"] is not None for p in paths)


def test_parallel_segmenters_keep_each_frame_its_own_mask_and_the_arrival_order(
    make_daemon, acq: Path, db_path: Path, tmp_path: Path
) -> None:
    from temseg.synth import simulate_frame

    paths = [acq / f"f_{i:02d}.tif" for i in range(12)]
    for i, path in enumerate(paths):  # simulated HRTEM: each frame has its own particles
        tifffile.imwrite(path, simulate_frame(("Au", "CdSe")[i % 2], 128, 300 + i).image)
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))  # the backlog goes oldest first
    masks = tmp_path / "masks"
    daemon = make_daemon(masks=masks, readers=3, segmenters=4, model=None)  # bundled model
    assert (daemon.readers, daemon.segmenters) == (3, 4)
    assert daemon.wait_idle(60)
    assert (daemon.stats.done, daemon.stats.failed) == (len(paths), 0)
    daemon.stop()

    rows = sorted(frame_rows(db_path), key=lambda r: r["id"])
    assert [r["source_path"] for r in rows] == [str(p) for p in paths]
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    offline = tmp_path / "offline"
    result = CliRunner().invoke(app, ["segment", *map(str, paths), "--out", str(offline)])
    assert result.exit_code == 0, result.output
    written = [tifffile.imread(row["mask_path"]) for row in rows]
    assert len({mask.tobytes() for mask in written}) == len(paths)  # a mix-up would show
    for mask, path in zip(written, paths, strict=True):
        np.testing.assert_array_equal(mask, tifffile.imread(offline / f"{path.stem}_mask.tif"))


def test_segmenter_processes_record_each_masks_own_particles(
    make_daemon, acq: Path, db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from temseg.segment import find_particles, min_particle_area_px
    from temseg.synth import simulate_frame

    paths = [acq / f"f_{i:02d}.tif" for i in range(6)]
    for i, path in enumerate(paths):
        frame = simulate_frame(("Au", "CdSe")[i % 2], 256, 400 + i)
        tifffile.imwrite(path, frame.image, metadata={"pixel_nm": 0.05})
    with caplog.at_level(logging.INFO, logger="temseg.daemon"):
        daemon = make_daemon(
            masks=tmp_path / "masks", segmenters=2, segmenter_processes=True, model=None
        )
    assert "segmenters=2 segment_workers=2" in caplog.text  # the ready line says so
    pool = daemon._segment_pool
    assert pool is not None and pool.workers == 2
    workers = list(pool._executor._processes.values())
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    assert daemon.wait_idle(60)
    assert (daemon.stats.done, daemon.stats.failed) == (len(paths), 0)
    daemon.stop()
    assert not any(w.is_alive() for w in workers)

    rows = frame_rows(db_path)
    assert sum(row["n_particles"] for row in rows) > 0
    for row in rows:
        with store(db_path) as engine:
            record = get_frame(engine, row["id"])
        assert record is not None and record.pixel_nm == 0.05
        mask = tifffile.imread(row["mask_path"])
        smallest = min_particle_area_px(0.05, Settings().min_particle_nm)
        expected = find_particles(mask, pixel_nm=0.05, min_area_px=smallest)
        assert len(record.particles) == len(expected) == row["n_particles"]
        for got, want in zip(record.particles, expected, strict=True):
            assert (got.label, got.area_px, got.bbox) == (want.label, want.area_px, want.bbox)
            assert got.centroid == pytest.approx(want.centroid)
            assert got.area_nm2 == pytest.approx(want.area_nm2)
        assert row["area_fraction"] == pytest.approx(mask.mean())


def test_packbits_masks_are_encoded_by_the_segmenters_and_published_intact(
    make_daemon, acq: Path, db_path: Path, tmp_path: Path
) -> None:
    from temseg.synth import simulate_frame

    daemon = make_daemon(mask_encoding="packbits", masks=tmp_path / "masks", model=None)
    sub = subscribe(daemon, acq)
    frames = [acq / f"p_{i}.tif" for i in range(3)]
    for i, path in enumerate(frames):
        tifffile.imwrite(path.with_suffix(".part"), simulate_frame("Au", 128, 700 + i).image)
        path.with_suffix(".part").rename(path)
    messages = receive_all(sub, frames)
    sub.close()
    for path in frames:
        message, row = messages[path], row_for(db_path, path)
        assert message.header["encoding"] == "packbits" and message.mask is not None
        np.testing.assert_array_equal(message.mask, tifffile.imread(row["mask_path"]))
        assert message.header["n_particles"] == row["n_particles"]


def test_compile_without_a_gpu_runs_eager_after_warming_the_listed_shapes(
    make_daemon, acq: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (acq / "a.tif").write_bytes(tiff_bytes(1))
    with caplog.at_level(logging.WARNING, logger="temseg.engine"):
        daemon = make_daemon(compile=True, warmup_shapes=["64x64", "96x80"], backend="auto")
    assert daemon.wait_idle(30) and daemon.stats.done == 1
    assert "runs eager" in caplog.text
    assert daemon.model is not None and not daemon.model.engine.compiled
    assert daemon.tile == CPU_TILE  # tile 0: from the device


def test_gil_switch_interval_shortened_while_the_daemon_runs(make_daemon, acq: Path) -> None:
    from temseg.daemon.service import GIL_SWITCH_INTERVAL_S

    before = sys.getswitchinterval()
    assert before != GIL_SWITCH_INTERVAL_S
    daemon = make_daemon()
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S)
    daemon.stop()
    assert sys.getswitchinterval() == before


def test_gil_switch_interval_restored_when_daemons_stop_in_start_order(
    make_daemon, acq: Path, tmp_path: Path
) -> None:
    from temseg.daemon.service import GIL_SWITCH_INTERVAL_S

    before = sys.getswitchinterval()
    first = make_daemon()
    second = make_daemon(db=str(tmp_path / "second.db"))
    first.stop()
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S)  # one still runs
    second.stop()
    assert sys.getswitchinterval() == before


def _policies(prefix: str) -> set[int]:
    """Linux scheduling policies of this process's live threads named ``prefix``..."""
    return {
        os.sched_getscheduler(t.native_id)
        for t in threading.enumerate()
        if t.name.startswith(prefix) and t.native_id is not None
    }


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
@pytest.mark.parametrize(("priority", "idle"), [("auto", False), ("normal", False), ("idle", True)])
def test_host_threads_yield_the_cores_to_a_cpu_engine_only_when_asked(
    make_daemon, acq: Path, priority: str, idle: bool
) -> None:
    daemon = make_daemon(host_priority=priority)  # the engine runs on the CPU here
    assert daemon.host_threads_idle is idle
    subscribe(daemon, acq).close()  # frames went through every stage
    host = os.SCHED_IDLE if idle else os.SCHED_OTHER
    for prefix in ("temseg-reader", "temseg-segmenter", "temseg-recorder"):
        assert _policies(prefix) == {host}, prefix
    assert _policies("temseg-inference") == {os.SCHED_OTHER}  # the engine's own thread


def test_only_host_priority_idle_asks_for_sched_idle() -> None:
    from temseg.daemon.host import host_threads_idle

    assert not host_threads_idle("auto")
    assert not host_threads_idle("normal")
    assert host_threads_idle("idle")


def test_unknown_host_priority_refused(acq: Path, db_path: Path) -> None:
    with pytest.raises(ConfigError, match="host_priority 'low'"):
        Daemon(Settings(watch=acq, db=str(db_path), host_priority="low"))


def test_objects_from_start_left_out_of_garbage_collections_while_running(
    make_daemon, acq: Path
) -> None:
    assert gc.get_freeze_count() == 0
    daemon = make_daemon()
    assert gc.get_freeze_count() > 10_000  # the modules, the model, the engine
    served = daemon.model
    assert served is not None and gc.is_tracked(served)
    assert not any(o is served for o in gc.get_objects())  # frozen: no collection walks it
    daemon.stop()
    assert gc.get_freeze_count() == 0
    assert any(o is served for o in gc.get_objects())


def test_thresholds_cached_until_the_model_check(db_path: Path, bundles: dict[str, Path]) -> None:
    from temseg.daemon.models import ModelServer

    with store(db_path) as engine:
        server = ModelServer(engine, pinned=str(bundles["a"]))
        try:
            assert server.threshold("CdSe") == (0.6, "bundle")
            calibrate_cdse(engine, bundles["a"], threshold=0.35)
            assert server.threshold("CdSe") == (0.6, "bundle")  # cached
            assert server.threshold("Au") == (0.5, "bundle")
            assert server.refresh() is False  # pinned: no swap, but the cache is gone
            assert server.threshold("CdSe") == (0.35, "calibration")
        finally:
            server.close()


@pytest.mark.parametrize(
    ("cores", "expected"), [(1, (2, 1)), (2, (2, 1)), (8, (3, 3)), (16, (6, 6)), (64, (8, 8))]
)
def test_host_workers_grow_with_the_cores(cores: int, expected: tuple[int, int]) -> None:
    from temseg.daemon.host import host_workers

    assert host_workers(cores) == expected
