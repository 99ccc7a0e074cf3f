"""One daemon per database, and a database file that is still the one opened.

Two daemons on the same database both processed and published every frame;
a database file deleted while the daemon ran went on being "written" (into
the unlinked file), and after a restart every frame was processed and
published again. :class:`DatabaseGuard` holds an exclusive ``flock`` on
``<database>.lock`` beside a SQLite file for the daemon's lifetime (the
kernel releases it when the process dies, however it dies) and remembers
the file's device and inode, so :meth:`DatabaseGuard.problem` can tell when
the file was deleted or replaced. Other databases (PostgreSQL) are not
guarded.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from temseg.config import ConfigError
from temseg.daemon.rules import sqlite_file

LOCK_SUFFIX = ".lock"


class DatabaseInUseError(ConfigError):
    """Another daemon holds the database."""


class DatabaseGuard:
    """The lock and identity of the SQLite file of ``db_url`` (a no-op for other databases)."""

    def __init__(self, db_url: str) -> None:
        file = sqlite_file(db_url)
        self.path: Path | None = None if file is None else file.resolve()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    @property
    def lock_path(self) -> Path | None:
        return None if self.path is None else self.path.with_name(self.path.name + LOCK_SUFFIX)

    def acquire(self) -> None:
        """Take the lock; :class:`DatabaseInUseError` naming the holder's pid if taken."""
        lock = self.lock_path
        if lock is None or self._fd is not None:
            return
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DatabaseInUseError(
                f"database {self.path} is in use by another temseg daemon (pid {holder}, "
                f"lock {lock}): stop that one first, or give this one another database"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def remember(self) -> None:
        """Note the database file's device and inode (call once it exists)."""
        if self.path is not None:
            info = self.path.stat()
            self._identity = (info.st_dev, info.st_ino)

    def problem(self) -> str | None:
        """Why the database file is no longer the one opened, or None while it is."""
        if self.path is None or self._identity is None:
            return None
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return f"database file {self.path} was deleted while the daemon ran"
        except OSError as exc:
            return f"database file {self.path} cannot be checked: {exc.strerror or exc}"
        if (info.st_dev, info.st_ino) != self._identity:
            return f"database file {self.path} was replaced by another file while the daemon ran"
        return None

    def release(self) -> None:
        """Drop the lock (the lock file stays; it holds no state)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
