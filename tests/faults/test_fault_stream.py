"""A subscriber that connects and never reads must not slow down or block the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq
from faultkit import DaemonProcess, count_rows, scaled, tiff_bytes, wait_for
from framekit import frame_rows, write_renamed

from temseg.daemon import Daemon
from temseg.stream import StreamMessage, Subscriber

SIZE = 256  # pixels: a mask plus float16 probabilities is 192 KiB per message


def probe_until_connected(daemon: Daemon, acq: Path, fast: Subscriber, stalled: zmq.Socket) -> int:
    """Write probe frames until both subscribers have one waiting; return how many were written."""
    probes = acq / "probes"
    probes.mkdir()
    for i in range(40):
        write_renamed(probes / f"probe_{i:02d}.tif", tiff_bytes(90_000 + i, SIZE))
        if fast.receive(timeout_ms=500) is not None and stalled.poll(500, zmq.POLLIN):
            return i + 1
    raise AssertionError("subscribers never received a probe")


def receive_frames(
    sub: Subscriber, n: int, got: list[StreamMessage], timeout_s: float = 120
) -> None:
    """Append the next ``n`` non-probe messages to ``got`` (gives up after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        message = sub.receive(timeout_ms=200)
        if message is not None and "probe_" not in message.header["source"]:
            got.append(message)


@pytest.mark.slow
def test_subscriber_that_never_reads_does_not_block_the_pipeline(
    make_daemon, acq: Path, db_path: Path
) -> None:
    # The daemon's own queue per subscriber (send_hwm 100): the stalled subscriber must
    # overflow it, so the burst is twice as long; a reading subscriber is never 100
    # messages behind, even on a machine busy with other work.
    n = scaled(200, 400)
    daemon = make_daemon(send_probability=True)
    assert daemon.bound_url is not None
    context = zmq.Context()
    stalled = context.socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 4096)  # bytes: a small kernel buffer fills at once
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.SUBSCRIBE, b"temseg.")
    stalled.connect(daemon.bound_url)
    fast = Subscriber(daemon.bound_url, timeout_ms=200)
    try:
        n_probes = probe_until_connected(daemon, acq, fast, stalled)
        got: list[StreamMessage] = []
        receiver = threading.Thread(target=receive_frames, args=(fast, n, got))
        receiver.start()
        for i in range(n):
            write_renamed(acq / f"frame_{i:04d}.tif", tiff_bytes(i, SIZE))
        assert wait_for(lambda: count_rows(db_path) >= n + n_probes, scaled(150, 300))
        assert daemon.wait_idle(30) and daemon.healthy()
        receiver.join(timeout=60)

        # Every frame was recorded and reached the subscriber that reads, without gaps ...
        assert {r["status"] for r in frame_rows(db_path)} == {"done"}
        assert len(got) == n and fast.gaps == []
        assert got[0].probability is not None and got[0].probability.shape == (SIZE, SIZE)
        # ... while the one that never read was given up on: it holds only part of the stream.
        held = 0
        while stalled.poll(200, zmq.POLLIN):
            stalled.recv_multipart()
            held += 1
        assert held < n, f"the stalled subscriber was sent all {n} messages"
        print(f"\n{n} frames recorded and received; the stalled subscriber held {held}")
    finally:
        fast.close()
        stalled.close()
        context.term()
    stats = daemon.stop()
    assert stats.done == n + n_probes


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="needs Linux's SCHED_IDLE")
def test_stream_threads_keep_normal_priority_when_host_threads_idle(tmp_path: Path) -> None:
    # ZeroMQ's I/O thread moves every message to the subscribers' sockets and pyzmq's
    # collector thread frees the buffers of zero-copy sends. Started by the recorder under
    # SCHED_IDLE they would inherit that policy and, on a busy machine, stall the stream
    # for every subscriber while the engine runs. A fresh process, so that no thread of
    # an earlier test is already there.
    probe = Path(__file__).with_name("thread_policies_probe.py")
    run = subprocess.run(
        [sys.executable, str(probe), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    policies = json.loads(run.stdout.splitlines()[-1])
    assert os.SCHED_IDLE in policies["host"], policies  # the premise: host threads are idle
    assert policies["zeromq"] and policies["collector"], policies
    assert os.SCHED_IDLE not in policies["zeromq"] + policies["collector"], policies


FLOOD_SCRIPT = """
import os, sys, zmq
context = zmq.Context()
sock = context.socket(zmq.XSUB)  # sends raw subscription messages
sock.setsockopt(zmq.SNDHWM, 0)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(sys.argv[1])
for _ in range(int(sys.argv[2])):
    sock.send(b"\\x01" + os.urandom(int(sys.argv[3])))
print("sent", flush=True)
sys.stdin.read()  # stay connected until the test is done
"""


def resident_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def flooding(pub: Any, count: int, size: int) -> Iterator[float]:
    """Have another process send ``count`` random subscriptions of ``size`` bytes to ``pub``
    while 100 masks are published; yield how much this process grew meanwhile (MiB)."""
    import numpy as np

    mask = np.zeros((8, 8), np.uint8)
    pub.publish_error("warm", "up")  # allocate what the first send allocates
    before = resident_mib()
    flooder = subprocess.Popen(
        [sys.executable, "-c", FLOOD_SCRIPT, pub.bound_url, str(count), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert flooder.stdout is not None and flooder.stdout.readline() == "sent\n"
        for _ in range(100):
            pub.publish_mask({"material": "Au", "source": "flood"}, mask)
            time.sleep(0.01)
        yield resident_mib() - before
    finally:
        flooder.kill()
        flooder.wait()


def assert_a_subscriber_still_receives(pub: Any) -> None:
    import numpy as np

    mask = np.zeros((8, 8), np.uint8)
    with Subscriber(pub.bound_url, topics=("temseg.mask.Au",), timeout_ms=100) as sub:
        got = None
        for _ in range(100):
            pub.publish_mask({"material": "Au", "source": "after"}, mask)
            got = sub.receive()
            if got is not None:
                break
        assert got is not None and got.header["source"] == "after"


def test_oversized_subscriptions_are_refused_not_stored() -> None:
    """A peer subscribing to 400 random 16 KiB prefixes grew the publisher by
    hundreds of MiB (libzmq keeps every prefix); now such a peer is disconnected,
    memory stays flat and a well-behaved subscriber still gets masks."""
    from temseg.stream import Publisher

    with Publisher("tcp://127.0.0.1:0") as pub:
        with flooding(pub, 400, 16 * 1024) as grown:
            assert grown < 16, f"resident memory grew by {grown:.0f} MiB"
            assert_a_subscriber_still_receives(pub)


def test_a_flood_of_short_subscriptions_is_cut_off() -> None:
    """100,000 random 64-byte prefixes (each within the size limit) from one peer grew
    the publisher by hundreds of MiB and held the sending thread inside libzmq; now the
    peer is disconnected once the table holds MAX_TOPICS prefixes, memory stays flat and
    a well-behaved subscriber still gets masks."""
    from temseg.stream import Publisher
    from temseg.stream.outlet import MAX_TOPICS

    with Publisher("tcp://127.0.0.1:0") as pub:
        with flooding(pub, 100_000, 64) as grown:
            assert grown < 32, f"resident memory grew by {grown:.0f} MiB"
            assert pub.outlet is not None and pub.outlet.refused >= 1
            assert pub.outlet.topics <= 2 * MAX_TOPICS
            assert_a_subscriber_still_receives(pub)


def test_idle_subscribers_leave_descriptors_for_frames(tmp_path: Path) -> None:
    """With 500 descriptors, 600 subscribers that connect and never read took them all
    and frames failed with "Too many open files"; now connections beyond max_subscribers
    (lowered to leave DESCRIPTOR_RESERVE free) are closed and the frame is recorded."""
    from temseg.daemon.lifecycle import DESCRIPTOR_RESERVE

    acq, db = tmp_path / "acq", tmp_path / "t.db"
    acq.mkdir()
    daemon = DaemonProcess(
        "--watch", str(acq), "--db", str(db), "--publish", "tcp://127.0.0.1:0",
        "--stable-s", "0.1", "--threads", "1",
        open_files=500,
    )  # fmt: skip
    context = zmq.Context()
    try:
        ready = daemon.wait_line(" ready ")
        url = "tcp://127.0.0.1:" + ready.split("publish=tcp://127.0.0.1:")[1].split()[0]
        assert daemon.logged(f"at most {500 - DESCRIPTOR_RESERVE} subscribers")
        subscribers = [context.socket(zmq.SUB) for _ in range(600)]
        for sub in subscribers:
            sub.setsockopt(zmq.RECONNECT_IVL, -1)  # a closed one stays closed
            sub.setsockopt(zmq.LINGER, 0)
            sub.connect(url)
        descriptors = Path(f"/proc/{daemon.proc.pid}/fd")
        wait_for(
            lambda: daemon.logged("closing the newest") or len(list(descriptors.iterdir())) >= 490,
            30,
        )
        write_renamed(acq / "frame.tif", tiff_bytes(1, 64))
        assert wait_for(lambda: len(frame_rows(db)) == 1, 60), daemon.lines[-10:]
        assert [row["status"] for row in frame_rows(db)] == ["done"]
        assert daemon.terminate() == 0
    finally:
        context.destroy(linger=0)
        daemon.close()
