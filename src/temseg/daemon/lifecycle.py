"""Process lifecycle: the systemd notify protocol and stop signals.

``sd_notify`` is implemented directly on the ``NOTIFY_SOCKET`` unix datagram
socket (path or abstract ``@name``), so no systemd library is needed. Outside
systemd (no ``NOTIFY_SOCKET``) every call is a silent no-op.

Messages sent by the daemon: ``READY=1`` once the model is loaded and warmed
and the publisher socket is bound, ``STATUS=...`` lines, ``WATCHDOG=1`` every
half ``WATCHDOG_USEC`` while the pipeline is healthy, ``STOPPING=1`` on shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from types import FrameType

logger = logging.getLogger(__name__)


def _socket_address(value: str) -> str | bytes:
    """``NOTIFY_SOCKET`` value -> address for ``socket.sendto`` ('@' = abstract namespace)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends sd_notify messages to ``NOTIFY_SOCKET``; does nothing when it is unset.

    ``environ`` defaults to ``os.environ``; it is read once, at construction.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = _socket_address(raw) if raw else None
        self._lock = threading.Lock()
        self._watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half ``WATCHDOG_USEC``), None if not asked for."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2e6

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (e.g. "READY=1", "STATUS=...") as one datagram; True if sent."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode()
        with self._lock:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                    sock.sendto(payload, self._address)
            except OSError as exc:
                logger.warning("sd_notify failed: %s", exc)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append(f"STATUS={status}")
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"] + ([f"STATUS={status}"] if status else [])
        return self.notify(*lines)

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """``WATCHDOG_USEC`` when it is meant for this process (``WATCHDOG_PID`` unset or ours)."""
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value if value > 0 else None


class WatchdogPinger:
    """Thread sending ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` while ``healthy()`` holds.

    When ``healthy()`` returns False the pings stop, so systemd's watchdog
    fires and restarts a wedged daemon.
    """

    def __init__(self, notifier: Notifier, healthy: Callable[[], bool]) -> None:
        self._notifier = notifier
        self._healthy = healthy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        interval = self._notifier.watchdog_interval_s
        if interval is None or not self._notifier.enabled:
            return
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="temseg-watchdog", daemon=True
        )
        self._thread.start()

    def _run(self, interval: float) -> None:
        was_healthy = True
        while True:
            healthy = self._healthy()
            if healthy:
                self._notifier.watchdog()
                if not was_healthy:
                    logger.warning("pipeline healthy again: systemd watchdog pings resume")
            elif was_healthy:
                logger.error("pipeline unhealthy: withholding the systemd watchdog ping")
            was_healthy = healthy
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def install_stop_signals(stop_event: threading.Event) -> Callable[[], None]:
    """Make SIGTERM, SIGINT and SIGHUP set ``stop_event``; return a function restoring the
    old handlers.

    Must be called from the main thread. A second signal while stopping is
    logged and otherwise ignored so the frame in flight still gets recorded.
    SIGHUP (a closed terminal, or ``kill -HUP``) used to end the process at
    once, unlogged; it now drains like SIGTERM. Settings are read at start:
    to apply changed ones, restart the daemon.
    """
    previous: dict[int, object] = {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_event.is_set():
            logger.warning("%s received again: already stopping", name)
        else:
            logger.info("%s received: stopping", name)
        stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

    return restore


def configure_logging(level: str = "INFO", environ: Mapping[str, str] | None = None) -> None:
    """Log to stderr, one ``key=value`` line per event.

    Under systemd (``JOURNAL_STREAM`` set) the journal adds time and unit, so
    lines carry only level and logger; elsewhere they start with a timestamp.
    """
    env = os.environ if environ is None else environ
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not env.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(level=numeric, format=fmt, force=True)


DESCRIPTOR_RESERVE = 256
"""Open-file descriptors kept out of the stream's reach: frames being read, the
database, the watcher, ZeroMQ's own, the metrics server."""


def subscribers_within_file_limit(max_subscribers: int) -> int:
    """``max_subscribers``, lowered (with a warning) so that the soft limit on open
    descriptors keeps :data:`DESCRIPTOR_RESERVE` of them for everything else."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or max_subscribers + DESCRIPTOR_RESERVE <= soft:
        return max_subscribers
    allowed = max(1, soft - DESCRIPTOR_RESERVE)
    logger.warning(
        "max_subscribers %d would leave too few of the %d open-file descriptors for reading "
        "frames: at most %d subscribers (raise LimitNOFILE= or lower max_subscribers)",
        max_subscribers,
        soft,
        allowed,
    )
    return allowed


def raise_file_limit(wanted: int = 65536) -> int:
    """Raise the soft limit on open descriptors towards ``wanted`` (at most the hard
    limit); return the soft limit now in force.

    Every subscriber connection holds a descriptor: with the usual soft limit
    of 1024, about a thousand idle connections to the publishing port left
    none for reading frames. The unit sets ``LimitNOFILE=``; this covers a
    daemon started by hand.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft
