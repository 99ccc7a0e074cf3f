"""The per-frame event stream: what observers see, and that they cannot harm the pipeline."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from framekit import write_renamed
from test_daemon import tiff_bytes

from temseg.daemon.events import TERMINAL, EventStream, FrameEvent


def event(kind: Any = "received", ticket: int = 0) -> FrameEvent:
    return FrameEvent(
        kind=kind, path=Path("/acq/a.tif"), relative_path="a.tif", ticket=ticket, latency_s=0.0
    )


class Collect:
    """An observer keeping every event; ``wait`` for a frame's terminal events."""

    def __init__(self) -> None:
        self.events: list[FrameEvent] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, e: FrameEvent) -> None:
        with self._cond:
            self.events.append(e)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait(self, terminals: int, timeout_s: float = 30.0) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(e.kind in TERMINAL for e in self.events) >= terminals, timeout_s
            )

    def of(self, name: str) -> list[FrameEvent]:
        return [e for e in self.events if e.path.name == name]


def test_inline_observers_see_events_in_order_on_the_emitting_thread() -> None:
    stream = EventStream()
    seen = Collect()
    stream.subscribe(seen, inline=True)
    for i in range(5):
        stream.emit(event(ticket=i))
    assert [e.ticket for e in seen.events] == list(range(5))
    assert seen.threads == {threading.current_thread().name}


def test_queued_observer_runs_on_its_own_thread_and_never_holds_up_emit() -> None:
    stream = EventStream()
    release = threading.Event()
    seen: list[int] = []

    def slow(e: FrameEvent) -> None:
        release.wait(30)
        seen.append(e.ticket)

    stream.subscribe(slow)
    start = time.monotonic()
    for i in range(50):
        stream.emit(event(ticket=i))
    emitted_s = time.monotonic() - start
    assert seen == []  # the observer is still stuck on the first event
    assert emitted_s < 5  # while emit went on: 50 puts, no wait on the observer
    release.set()
    stream.close()  # delivers what is buffered
    assert seen == list(range(50))


def test_a_queued_observer_far_behind_loses_the_oldest_events_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = EventStream()
    entered, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def stuck(e: FrameEvent) -> None:
        entered.set()
        release.wait(30)
        seen.append(e.ticket)

    with caplog.at_level(logging.WARNING, logger="temseg.daemon"):
        stream.subscribe(stuck, max_pending=3)
        stream.emit(event(ticket=0))
        assert entered.wait(30)  # event 0 is with the observer, the buffer is empty
        for i in range(1, 10):
            stream.emit(event(ticket=i))
        release.set()
        stream.close()
    assert seen == [0, 7, 8, 9]
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1


def test_an_observer_that_raises_is_logged_once_and_harms_no_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = EventStream()
    after = Collect()
    queued = Collect()

    def broken(_e: FrameEvent) -> None:
        raise RuntimeError("observer bug")

    with caplog.at_level(logging.ERROR, logger="temseg.daemon"):
        stream.subscribe(broken, inline=True)
        stream.subscribe(broken)
        stream.subscribe(after, inline=True)
        stream.subscribe(queued)
        for i in range(3):
            stream.emit(event(ticket=i))  # raises nothing
        stream.close()
    assert [e.ticket for e in after.events] == [0, 1, 2]
    assert [e.ticket for e in queued.events] == [0, 1, 2]
    failures = [r for r in caplog.records if "event observer" in r.getMessage()]
    assert len(failures) == 2  # one per broken subscription, not one per event


def test_unsubscribed_observers_hear_nothing_more() -> None:
    stream = EventStream()
    inline, queued = Collect(), Collect()
    stop_inline = stream.subscribe(inline, inline=True)
    stop_queued = stream.subscribe(queued)
    stream.emit(event(ticket=0))
    stop_inline()
    stop_queued()  # delivers what it had
    stream.emit(event(ticket=1))
    assert [e.ticket for e in inline.events] == [0]
    assert [e.ticket for e in queued.events] == [0]


def test_each_frame_reports_every_stage_once_and_ends_with_one_outcome(
    make_daemon: Any, acq: Path
) -> None:
    daemon = make_daemon()
    seen = Collect()
    daemon.events.subscribe(seen)
    good = acq / "good.tif"
    write_renamed(good, tiff_bytes(31))
    assert seen.wait(1)
    write_renamed(acq / "broken.tif", b"II*\x00 this is not a TIFF")
    daemon.submit(good)  # the same bytes again
    assert seen.wait(3)
    assert daemon.wait_idle(30)
    stats = daemon.stop()

    events = seen.of("good.tif")
    kinds = [e.kind for e in events]
    assert kinds == [
        "received",
        "read",
        "inferred",
        "segmented",
        "recorded",
        "published",
        "received",
        "skipped",
    ]
    first = events[:6]
    assert len({e.ticket for e in first}) == 1 and events[6].ticket != first[0].ticket
    latencies = [e.latency_s for e in first]
    assert latencies == sorted(latencies) and latencies[0] >= 0
    assert all(e.stage_s is not None and e.stage_s > 0 for e in first[1:4])
    published = first[-1]
    assert published.frame_id is not None and published.seq is not None
    assert published.model_id is not None and published.n_particles is not None
    assert published.material == "Au" and len(published.sha256) == 64

    broken = [e.kind for e in seen.of("broken.tif")]
    assert broken == ["received", "recorded", "failed"]
    assert seen.of("broken.tif")[-1].error is not None
    assert (stats.done, stats.failed, stats.skipped) == (1, 1, 1)


def test_a_broken_observer_does_not_stop_frames(
    make_daemon: Any, acq: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_e: FrameEvent) -> None:
        raise RuntimeError("observer bug")

    daemon = make_daemon()
    daemon.events.subscribe(broken, inline=True)
    daemon.events.subscribe(broken)
    with caplog.at_level(logging.ERROR, logger="temseg.daemon"):
        for i in range(3):
            write_renamed(acq / f"f{i}.tif", tiff_bytes(40 + i))
        assert daemon.wait_idle(30)
        deadline = time.monotonic() + 30
        while daemon.stats.done < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert daemon.stats.done == 3 and daemon.healthy()
    assert sum("event observer" in r.getMessage() for r in caplog.records) == 2
