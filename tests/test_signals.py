"""SIGHUP drains the daemon like SIGTERM instead of killing it unlogged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import logging, os, signal, threading
from temseg.daemon.lifecycle import install_stop_signals
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
stop = threading.Event()
restore = install_stop_signals(stop)
os.kill(os.getpid(), signal.SIGHUP)
print("stop requested" if stop.wait(5) else "not stopped", flush=True)
restore()
"""


def test_sighup_sets_the_stop_event_and_is_logged() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=60,
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"  # was -1: killed
    assert done.stdout.strip() == "stop requested"
    assert "SIGHUP received: stopping" in done.stderr
