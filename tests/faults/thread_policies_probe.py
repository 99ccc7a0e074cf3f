"""Start a daemon with idle host threads, publish one frame, print thread policies as JSON.

Run as a script by ``test_fault_stream.py`` in a process of its own. The last line of
output is ``{"host": [...], "zeromq": [...], "collector": [...]}``: the scheduling policies
of the Python threads other than the main thread, of ZeroMQ's background threads and the
publisher's outlet thread, and of pyzmq's zero-copy collector thread.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from zmq.utils.garbage import gc as zero_copy_collector

from temseg.config import Settings
from temseg.daemon import Daemon
from temseg.stream import Subscriber

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
from faultkit import tiff_bytes  # noqa: E402
from framekit import write_renamed  # noqa: E402


def thread_policies() -> dict[str, list[int]]:
    collector = zero_copy_collector.thread
    collector_id = collector.native_id if collector is not None else None
    outlets = {t.native_id for t in threading.enumerate() if t.name == "temseg-outlet"}
    policies: dict[str, list[int]] = {"host": [], "zeromq": [], "collector": []}
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        if tid == os.getpid():
            continue
        name = (task / "comm").read_text().strip()
        if tid == collector_id:
            kind = "collector"
        elif name.startswith("ZMQbg") or tid in outlets:
            kind = "zeromq"
        else:
            kind = "host"
        policies[kind].append(os.sched_getscheduler(tid))
    return policies


def main(root: Path) -> None:
    acq = root / "acq"
    acq.mkdir()
    settings = Settings(
        watch=acq,
        db=str(root / "temseg.db"),
        publish="tcp://127.0.0.1:0",
        stable_s=0.1,
        threads=1,
        host_priority="idle",
        metrics="off",
        send_probability=True,  # a message large enough to be sent without a copy
    )
    daemon = Daemon(settings)
    daemon.start()
    try:
        assert daemon.bound_url is not None
        with Subscriber(daemon.bound_url, timeout_ms=200) as subscriber:
            for i in range(100):
                write_renamed(acq / f"frame_{i:03d}.tif", tiff_bytes(i, 256))
                if subscriber.receive(timeout_ms=1000) is not None:
                    break
            else:
                raise AssertionError("no frame was published")
            print(json.dumps(thread_policies()))
    finally:
        daemon.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
