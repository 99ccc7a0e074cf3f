"""Folder watching: a frame is reported once, only when complete (real watchdog observers)."""

from __future__ import annotations

import os
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
