"""How many host threads the daemon runs, and at which CPU priority.

Host threads are the readers, the segmenters and the recorder: everything but
the inference thread (``docs/daemon.md``, "Threads").
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. systemd ``CPUAffinity=``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def host_workers(cores: int) -> tuple[int, int]:
    """(reader threads, segmenter threads) for a machine with ``cores`` cores.

    Reading a frame and segmenting it cost about as much CPU time each
    (``benchmarks/bench_host.py``), so both get 3 of every 8 cores, from 2
    readers and 1 segmenter up to 8 each; the rest is left to the inference
    thread, the recorder and the watcher. A GPU serving tens of large frames
    per second needs these stages spread over many cores; on a small
    CPU-only machine the engine's threads need the cores instead.
    """
    cores = max(1, cores)
    share = 3 * cores // 8
    return max(2, min(8, share)), max(1, min(8, share))


def host_threads_idle(host_priority: str) -> bool:
    """Whether the readers, segmenters and recorder should run under SCHED_IDLE.

    ``host_priority`` is a :data:`~temseg.options.HostPriority`; only "idle"
    asks for it ("auto" is "normal"). Beside a CPU engine it lets the
    engine's threads go first, but beside any other busy program a
    SCHED_IDLE thread gets a fraction of a percent of a core, and an
    unprivileged process cannot take its threads out of SCHED_IDLE again
    (``docs/daemon.md``).
    """
    return host_priority == "idle"
