"""Helpers shared by the fault-injection tests: frames, databases, daemon processes.

``TEMSEG_FAULTS_FULL=1`` selects the full sizes of the reliability plan
(2,000-frame burst, 20 kills); by default the suite runs scaled-down counts
that keep it to a couple of minutes on two CPU cores.
"""

from __future__ import annotations

import io
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

FULL = os.environ.get("TEMSEG_FAULTS_FULL") == "1"


def scaled(ci: int, full: int) -> int:
    """``full`` under ``TEMSEG_FAULTS_FULL=1``, else ``ci``."""
    return full if FULL else ci


# ---------------------------------------------------------------- frames


def tiff_bytes(
    seed: int,
    size: int = 32,
    *,
    material: str | None = None,
) -> bytes:
    """A ``size`` x ``size`` uint16 TIFF frame in memory (``material`` in its description JSON)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 4000, (size, size), dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, metadata={"material": material} if material else {})
    return buffer.getvalue()


# ---------------------------------------------------------------- database


def count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM frames").fetchone()[0])
        except sqlite3.OperationalError:  # schema not created yet
            return 0


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of the database ("ok" when sound)."""
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        return "\n".join(r[0] for r in conn.execute("PRAGMA integrity_check"))


def wait_for(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def assert_recorded_once(rows: list[dict[str, Any]], expected: Mapping[Path, str]) -> None:
    """Each (path, SHA-256) of ``expected`` has exactly one row, and there is no other row."""
    identities = [(r["source_path"], r["sha256"]) for r in rows]
    duplicates = {i for i in identities if identities.count(i) > 1}
    assert not duplicates, f"recorded more than once: {sorted(duplicates)[:5]}"
    wanted = {(str(p), sha) for p, sha in expected.items()}
    missing, extra = wanted - set(identities), set(identities) - wanted
    assert not missing, f"{len(missing)} frame(s) never recorded, e.g. {sorted(missing)[:3]}"
    assert not extra, f"unexpected rows {sorted(extra)[:3]}"


# ---------------------------------------------------------------- sockets


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- daemon process


class DaemonProcess:
    """``temseg daemon`` in a child process; stderr lines are collected as they come."""

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        open_files: int | None = None,
    ) -> None:
        """``open_files``: the child's limit on open descriptors (soft and hard)."""
        command = [sys.executable, "-c", "from temseg.cli import app; app()", "daemon", *args]
        full_env = {**os.environ, "TEMSEG_METRICS": "127.0.0.1:0", **(env or {})}
        full_env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen(
            command,
            env=full_env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            preexec_fn=None if open_files is None else lambda: _limit_open_files(open_files),
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            self._new.put(line)

    def wait_line(self, text: str, timeout_s: float = 60.0) -> str:
        """The first line (old or new) containing ``text``; AssertionError after ``timeout_s``."""
        for line in list(self.lines):
            if text in line:
                return line
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.proc.poll() is not None and self._new.empty()):
                tail = "".join(self.lines[-20:])
                raise AssertionError(f"daemon never logged {text!r}; last lines:\n{tail}")
            try:
                line = self._new.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if text in line:
                return line

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait(self, timeout_s: float = 60.0) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def close(self) -> None:
        """Make sure the child is gone (used in ``finally``)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _limit_open_files(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``), in bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
