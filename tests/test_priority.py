"""Per-thread nice values (Linux): real threads, priorities read back from the kernel."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from temseg.daemon.priority import MAX_NICE, lower_thread_priority

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice is Linux only"
)


def _in_thread(increment: int) -> tuple[bool, int]:
    """(result, nice value afterwards) of ``lower_thread_priority`` in a fresh thread."""
    out: list[tuple[bool, int]] = []

    def run() -> None:
        changed = lower_thread_priority(increment)
        out.append((changed, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out[0]


def test_only_the_calling_thread_is_lowered() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    changed, nice = _in_thread(3)
    assert changed == (base < MAX_NICE)
    assert nice == min(MAX_NICE, base + 3)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def test_capped_at_the_lowest_priority() -> None:
    assert _in_thread(MAX_NICE)[1] == MAX_NICE


def test_zero_changes_nothing() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert _in_thread(0) == (False, base)


@pytest.mark.parametrize("increment", [-1, 20])
def test_out_of_range_is_refused(increment: int) -> None:
    with pytest.raises(ValueError, match=r"0\.\.19"):
        lower_thread_priority(increment)
