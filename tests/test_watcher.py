"""Folder watching: a frame is reported once, only when complete (real watchdog observers)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from temseg.daemon.frame_queue import FrameQueue, SeenCache, Stopped
from temseg.daemon.watcher import FrameWatcher, admissible, matches, scan_backlog


class Recorder:
    """Collects reported paths with the file's size at report time."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.cond = threading.Condition()

    def __call__(self, path: Path) -> None:
        with self.cond:
            self.events.append((path.name, path.stat().st_size))
            self.cond.notify_all()

    def wait_for(self, n: int, timeout_s: float = 10.0) -> list[tuple[str, int]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.events) >= n, timeout_s)
            return list(self.events)


def settle(seconds: float = 0.6) -> None:
    """Leave the observer time to deliver any further (unwanted) events."""
    time.sleep(seconds)


@pytest.fixture(params=["inotify", "polling"])
def watched(request: pytest.FixtureRequest, tmp_path: Path):
    root = tmp_path / "acq"
    root.mkdir()
    rec = Recorder()
    watcher = FrameWatcher(
        root, rec, polling=request.param == "polling", poll_interval_s=0.1, stable_s=0.4
    )
    watcher.start()
    yield root, rec, request.param
    watcher.stop()


def test_slow_chunked_writer_reported_once_after_close(watched) -> None:
    root, rec, _ = watched
    chunk = b"\x07" * 4096
    with open(root / "slow.tif", "wb") as fh:
        for _ in range(6):
            fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
            time.sleep(0.15)  # pauses shorter than stable_s, as a camera streaming a frame
            assert rec.events == []
    events = rec.wait_for(1)
    settle()
    assert rec.events == [("slow.tif", 6 * len(chunk))] == events


def test_rename_into_place_reported_once(watched) -> None:
    root, rec, _ = watched
    part = root / "frame_0001.tif.part"
    part.write_bytes(b"\x01" * 1000)
    settle(0.3)
    part.rename(root / "frame_0001.tif")
    rec.wait_for(1)
    settle()
    assert rec.events == [("frame_0001.tif", 1000)]


def test_moved_in_from_elsewhere_reported_once(watched, tmp_path: Path) -> None:
    root, rec, _ = watched
    outside = tmp_path / "staging.tif"
    outside.write_bytes(b"\x02" * 500)
    outside.rename(root / "moved.tif")
    rec.wait_for(1)
    settle()
    assert rec.events == [("moved.tif", 500)]


def test_non_matching_names_ignored_and_subfolders_watched(watched) -> None:
    root, rec, _ = watched
    (root / "notes.txt").write_text("not a frame")
    (root / "frame.tif.part").write_bytes(b"\x00" * 10)
    (root / "frame.json").write_text("{}")
    sub = root / "CdSe" / "session1"
    sub.mkdir(parents=True)
    time.sleep(0.3)  # let inotify add the new folders' watches
    (sub / "deep.TIFF").write_bytes(b"\x03" * 20)
    rec.wait_for(1)
    settle()
    assert rec.events == [("deep.TIFF", 20)]


def test_frame_written_at_once_into_a_new_folder_is_not_missed(watched) -> None:
    root, rec, _ = watched
    session = root / "session" / "grid2"
    session.mkdir(parents=True)  # no pause: the first frame may precede the folder's watch
    (session / "first.tif").write_bytes(b"\x04" * 3000)
    rec.wait_for(1)
    settle(1.0)
    # Possibly reported twice (event and folder scan): the daemon's SHA-256 identity
    # absorbs that. Never missed, never reported before it was complete.
    assert {event for event in rec.events} == {("first.tif", 3000)}


def test_polling_waits_for_stable_size_and_mtime(tmp_path: Path) -> None:
    rec = Recorder()
    watcher = FrameWatcher(tmp_path, rec, polling=True, poll_interval_s=0.1, stable_s=0.8)
    watcher.start()
    try:
        path = tmp_path / "grow.tif"
        for i in range(5):  # a writer on a network share: open/append/close, 0.3 s apart
            with open(path, "ab") as fh:
                fh.write(bytes([i]) * 100)
            time.sleep(0.3)
            assert rec.events == []
        rec.wait_for(1)
        settle()
        assert rec.events == [("grow.tif", 500)]
    finally:
        watcher.stop()


def test_symlinks_ignored_unless_followed_and_inside(tmp_path: Path) -> None:
    root = tmp_path / "acq"
    root.mkdir()
    outside = tmp_path / "secret.tif"
    outside.write_bytes(b"x")
    inside = root / "real.tif"
    inside.write_bytes(b"y")
    (root / "out_link.tif").symlink_to(outside)
    (root / "in_link.tif").symlink_to(inside)
    real_root = root.resolve()
    assert admissible(root / "real.tif", real_root)
    assert not admissible(root / "in_link.tif", real_root)
    assert admissible(root / "in_link.tif", real_root, follow_symlinks=True)
    assert not admissible(root / "out_link.tif", real_root, follow_symlinks=True)
    assert [p.name for p in scan_backlog(root)] == ["real.tif"]
    names = sorted(p.name for p in scan_backlog(root, follow_symlinks=True))
    assert names == ["in_link.tif", "real.tif"]


def test_backlog_oldest_first_recursive_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    files = {"b.tif": 300, "sub/a.tiff": 100, "c.TIF": 200, "skip.png": 50}
    for name, age in files.items():
        path = tmp_path / name
        path.write_bytes(b"z")
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    assert [p.name for p in scan_backlog(tmp_path)] == ["a.tiff", "c.TIF", "b.tif"]
    assert [p.name for p in scan_backlog(tmp_path, recursive=False)] == ["c.TIF", "b.tif"]
    assert all(p.is_absolute() for p in scan_backlog(tmp_path))


def test_matches_is_case_insensitive() -> None:
    assert matches("X.TIF", ["*.tif"]) and matches("x.tiff", ["*.tif", "*.tiff"])
    assert not matches("x.tif.part", ["*.tif"]) and not matches("x.tmp", ["*.tif"])


def test_frame_queue_blocks_when_full_and_batches_by_key() -> None:
    stop = threading.Event()
    q: FrameQueue[tuple[str, int]] = FrameQueue(2, stop)
    q.put(("a", 1))
    q.put(("a", 2))
    released = threading.Event()

    def producer() -> None:
        q.put(("b", 3))  # waits: the queue is full
        released.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert not released.wait(0.3)
    assert q.take_batch(4, key=lambda item: item[0]) == [("a", 1), ("a", 2)]
    assert released.wait(5)
    thread.join()
    q.put(("a", 4))
    assert q.take_batch(4, key=lambda item: item[0]) == [("b", 3)]
    assert q.take_batch(4, key=lambda item: item[0]) == [("a", 4)]
    assert q.take_batch(4, key=lambda item: item[0], timeout_s=0.05) == []
    q.put(("c", 5))
    q.put(("c", 6))
    stop.set()
    with pytest.raises(Stopped):
        q.put(("c", 7))


def test_seen_cache_forgets_oldest() -> None:
    seen = SeenCache(capacity=2)
    assert seen.add("a") and seen.add("b") and not seen.add("a")
    assert seen.add("c")  # evicts "b", the least recently used
    assert seen.add("b") and not seen.add("c")


@pytest.fixture
def deep_tree(tmp_path: Path):
    """Make ``mkdir -p`` of ``levels`` nested folders under a folder (Python's makedirs
    recurses per level); removed with ``rm -rf`` afterwards, since shutil.rmtree, which
    pytest cleans its temporary folders with, recurses per level too."""
    made: list[Path] = []

    def make(root: Path, levels: int) -> Path:
        deepest = root.joinpath(*["d"] * levels)
        subprocess.run(["mkdir", "-p", str(deepest)], check=True)
        made.append(root / "d")
        return deepest

    yield make
    for top in made:
        subprocess.run(["rm", "-rf", str(top)], check=True)


def test_a_1100_level_tree_before_start_neither_breaks_the_backlog_nor_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, deep_tree
) -> None:
    root = tmp_path / "acq"
    root.mkdir()
    deepest = deep_tree(root, 1100)
    (root / "d" / "shallow.tif").write_bytes(b"x")
    (deepest / "deep.tif").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="temseg.daemon.watcher"):
        assert [p.name for p in scan_backlog(root, max_depth=8)] == ["shallow.tif"]
    assert any("folder levels deep" in r.getMessage() for r in caplog.records)

    rec = Recorder()
    watcher = FrameWatcher(root, rec, stable_s=0.2)
    watcher.start()  # watchdog walks the whole tree to add its watches
    try:
        (root / "new.tif").write_bytes(b"y")
        assert rec.wait_for(1) == [("new.tif", 1)]
        assert watcher.is_alive()
    finally:
        watcher.stop()


def test_a_1100_level_tree_made_while_watching_keeps_the_watcher_alive(
    tmp_path: Path, deep_tree
) -> None:
    root = tmp_path / "acq"
    root.mkdir()
    rec = Recorder()
    watcher = FrameWatcher(root, rec, stable_s=0.2)
    watcher.start()
    try:
        deepest = deep_tree(root, 1100)
        (deepest / "deep.tif").write_bytes(b"x")
        settle(1.0)
        (root / "after.tif").write_bytes(b"yy")
        events = rec.wait_for(1, timeout_s=60)  # behind 1,100 folder events on a busy machine
        assert ("after.tif", 2) in events and all(name != "deep.tif" for name, _ in events)
        assert watcher.is_alive()
    finally:
        watcher.stop()


def test_a_dead_watcher_thread_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "acq"
    root.mkdir()
    watcher = FrameWatcher(root, Recorder(), stable_s=0.2)
    watcher.start()
    try:
        watcher._tracker.stop()  # as if it had died of an exception
        with caplog.at_level(logging.ERROR, logger="temseg.daemon.watcher"):
            assert not watcher.is_alive()
            assert not watcher.is_alive()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "watcher stopped" in errors[0]
    finally:
        watcher.stop()


@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_a_deleted_and_recreated_folder_is_watched_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    root = tmp_path / "acq"
    root.mkdir()
    rec = Recorder()
    watcher = FrameWatcher(
        root, rec, polling=mode == "polling", poll_interval_s=0.1, stable_s=0.2,
        guard_interval_s=0.1,
    )  # fmt: skip
    watcher.start()
    try:
        with caplog.at_level(logging.WARNING, logger="temseg.daemon.watcher"):
            (root / "before.tif").write_bytes(b"1")
            assert rec.wait_for(1) == [("before.tif", 1)]
            shutil.rmtree(root)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "was deleted" not in caplog.text:
                time.sleep(0.05)
            assert "was deleted" in caplog.text and watcher.is_alive()
            root.mkdir()
            (root / "early.tif").write_bytes(b"22")  # before the watch is back
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "again" not in caplog.text:
                time.sleep(0.05)
            (root / "after.tif").write_bytes(b"333")
            events = rec.wait_for(3)
        # A file may be reported twice after a re-arm; the daemon skips the second.
        assert sorted(set(events)) == [("after.tif", 3), ("before.tif", 1), ("early.tif", 2)]
        assert watcher.is_alive()
    finally:
        watcher.stop()


def test_mask_paths_are_unique_per_frame_path() -> None:
    from temseg.daemon.rules import mask_path

    names = ["scan.tif", "scan.tiff", "scan.TIF", "scan", "scan.tif.tif", "a/scan.tif"]
    frames = [(n, None) for n in names] + [(n, k) for n in ("scan.tif", "scan.mrc") for k in (0, 1)]
    masks = {mask_path(Path("/m"), n, k) for n, k in frames}
    assert len(masks) == len(frames)  # also the frames of a stack, and a stack's vs a file's
    assert all(str(m).endswith(".tif") and m.is_relative_to("/m") for m in masks)
    assert mask_path(Path("/m"), "a/scan.mrc", 2) == Path("/m/a/scan.mrc.2.mask.tif")


def test_shown_path_escapes_control_characters_and_non_utf8_bytes() -> None:
    from temseg.daemon.rules import shown_path

    assert shown_path("a/b é.tif") == "a/b é.tif"
    forged = shown_path("x.tif\nCRITICAL temseg.daemon: FORGED")
    assert "\n" not in forged and forged == "x.tif\\x0aCRITICAL temseg.daemon: FORGED"
    undecodable = os.fsdecode(b"caf\xe9.tif")
    assert shown_path(undecodable) == "caf\\xe9.tif"
    shown_path(undecodable).encode("utf-8")  # SQLite and the stream's JSON can take it
    # One-to-one: a name that spells the escape itself gives other text.
    assert shown_path("caf\\xe9.tif") != shown_path(undecodable)
