"""Read a frame file's bytes so that what is read is what was listed, and nothing else.

A path is checked when it is listed, and read later; in between anyone who
can write the watched folder can swap the file for a symbolic link (to a
secret, or to ``/dev/zero``), a FIFO (which blocks every reader) or a huge
file. :func:`read_listed` therefore opens the file itself under the rules:

- every folder from the watched folder down, and the file, is opened with
  ``O_NOFOLLOW`` relative to its parent's descriptor: no symbolic link is
  followed and nothing outside the watched folder is reached (with
  ``follow_symlinks`` the path is resolved first and must stay inside);
- ``O_NONBLOCK``: opening a FIFO or a device does not wait for a writer;
- the open descriptor is checked with ``fstat``: a regular file, the same
  device and inode as when it was listed (when known), at most
  ``max_bytes`` bytes; then only that descriptor is read, within a deadline.

Refusals are :class:`~temseg.frames.FrameError` (the file's verdict: a
``failed`` row). Errors that say nothing about the file (no descriptor
left, no memory, interrupted) are :class:`TransientReadError`: the caller
tries again later and records nothing. No message quotes the file's bytes;
messages name the path as it is (escape it with
:func:`~temseg.daemon.rules.shown_path` before logging or recording it).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from temseg.frames import FrameError

TRANSIENT_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM, errno.EINTR, errno.ENOBUFS}
)
"""Errors of the machine, not of the file: retried, never recorded as the file's verdict."""

_CHUNK_BYTES = 64 << 20  # the most one read asks for: the deadline is checked between reads
_GROWTH_BYTES = 1 << 20  # asked for once fstat's size has been read, until end of file
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class TransientReadError(OSError):
    """Reading failed for a reason of the machine (EMFILE, ENOMEM, ...): try again later."""


def _refuse(path: Path, why: str) -> FrameError:
    return FrameError(f"{path}: {why}")


def _failure(path: Path, exc: OSError) -> OSError | FrameError:
    if exc.errno in TRANSIENT_ERRNOS:
        return TransientReadError(exc.errno, f"{path}: {exc.strerror}")
    if exc.errno == errno.ELOOP:
        return _refuse(path, "is or lies below a symbolic link: not read")
    if exc.errno == errno.ENOTDIR:
        return _refuse(path, "a folder on its path is a symbolic link or no folder: not read")
    return _refuse(path, f"cannot read ({exc.strerror or exc})")


class _Deadline:
    """Refuses a read still going ``seconds`` after it started."""

    def __init__(self, path: Path, seconds: float) -> None:
        self._path, self._seconds = path, seconds
        self._end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self._end:
            raise _refuse(self._path, f"reading took longer than {self._seconds:g} s: not read")


def _read_chunks(
    fd: int, path: Path, size: int, total: int, max_bytes: int, deadline: _Deadline
) -> list[bytes]:
    """The rest of ``fd`` (``size`` bytes by fstat) after ``total`` bytes, refused beyond
    ``max_bytes`` in all."""
    chunks: list[bytes] = []
    while True:
        # Ask for the size fstat gave (and a byte more, to see growth): a read that
        # fills its buffer needs neither a shrink nor, as the only chunk, a join.
        chunk = os.read(fd, min(_CHUNK_BYTES, max(size + 1 - total, _GROWTH_BYTES)))
        if not chunk:
            return chunks
        total += len(chunk)
        if total > max_bytes:
            raise _refuse(path, f"file grew beyond max_file_bytes ({max_bytes} bytes)")
        chunks.append(chunk)
        deadline.check()


def _open_below(root: Path, relative: Path) -> int:
    """A descriptor of ``root / relative`` opened one component at a time without
    following links; raises OSError (ELOOP for a link, ENOTDIR for a swapped folder)."""
    parts = relative.parts
    if not parts or any(part in ("..", "/", "") for part in parts):
        raise OSError(errno.EXDEV, "not below the watched folder")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def read_listed(
    path: Path,
    root: Path,
    *,
    max_bytes: int,
    deadline_s: float = 60.0,
    follow_symlinks: bool = False,
    identity: tuple[int, int] | None = None,
    into: Callable[[int], bytearray | None] | None = None,
) -> tuple[bytes | bytearray, float]:
    """The bytes and modification time (POSIX s) of frame ``path`` below ``root``.

    Parameters
    ----------
    path
        The frame, absolute, below ``root`` (both as listed by the watcher).
    root
        The watched folder, absolute and resolved.
    max_bytes
        Largest file accepted, in bytes (the ``max_file_bytes`` setting).
    deadline_s
        Seconds the whole read may take; a read still going after that is
        refused (a file on a hung network share, a file growing forever).
        It is checked between reads of at most 64 MiB each.
    follow_symlinks
        Resolve ``path`` first; the result must lie below ``root``.
    identity
        ``(st_dev, st_ino)`` of the file when it was listed: another file
        in its place is refused.
    into
        Gives a buffer of the requested size to read the file into, or None
        (see :class:`~temseg.daemon.read_buffers.ReadBuffers`): returned as
        the content unless the file's size changed since ``fstat``.

    Returns
    -------
    tuple of bytes or bytearray, and float
        The content and ``st_mtime`` of the descriptor read.

    Raises
    ------
    FrameError
        The file is refused (link, not a regular file, replaced, too large,
        too slow) or cannot be read; its verdict.
    TransientReadError
        Reading failed for a reason that is not the file's; try again later.
    """
    target = path
    if follow_symlinks:
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise _refuse(path, f"cannot resolve ({exc})") from None
    try:
        relative = target.relative_to(root)
    except ValueError:
        raise _refuse(path, "resolves outside the watched folder: not read") from None
    try:
        fd = _open_below(root, relative)
    except OSError as exc:
        raise _failure(path, exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, "not a regular file (a FIFO, device or folder): not read")
        if identity is not None and (info.st_dev, info.st_ino) != identity:
            raise _refuse(path, "was replaced by another file after it was listed: not read")
        if info.st_size > max_bytes:
            raise _refuse(
                path,
                f"file of {info.st_size} bytes exceeds max_file_bytes ({max_bytes} bytes)",
            )
        deadline = _Deadline(path, deadline_s)
        buffer = None if into is None or info.st_size == 0 else into(info.st_size)
        if buffer is None:
            chunks = _read_chunks(fd, path, info.st_size, 0, max_bytes, deadline)
            return b"".join(chunks), info.st_mtime
        total = 0
        with memoryview(buffer) as view:
            while total < info.st_size:
                with view[total : total + _CHUNK_BYTES] as part:
                    n = os.readv(fd, [part])
                if n == 0:  # shorter than fstat said: what there is
                    return bytes(view[:total]), info.st_mtime
                total += n
                deadline.check()
        more = _read_chunks(fd, path, info.st_size, total, max_bytes, deadline)
        return (bytes(buffer) + b"".join(more) if more else buffer), info.st_mtime
    except OSError as exc:
        raise _failure(path, exc) from None
    finally:
        os.close(fd)
