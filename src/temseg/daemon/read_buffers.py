"""Buffers that frame files are read into, used again once nothing refers to them.

Memory the process has not touched yet costs the kernel a page fault per
4 KiB: for a fresh 32 MiB buffer that is several times the cost of copying
the file into it from the page cache (``benchmarks/RESULTS.md``). So readers
take their buffers from :class:`ReadBuffers`, which hands a buffer out again
only once it holds the only reference to it: a frame decoded without a copy
(an uncompressed TIFF) is a view of its file's buffer and keeps it out of
use until the frame, and every view of it, is gone. Nothing is ever
returned by hand, so nothing can be returned too early.
"""

from __future__ import annotations

import sys
import threading


def _references(buffers: list[bytearray], i: int) -> int:
    return sys.getrefcount(buffers[i])


_UNUSED = _references([bytearray(1)], 0)
"""What :func:`_references` gives for a buffer that only its list refers to."""


class ReadBuffers:
    """At most ``max_buffers`` buffers, handed out by size (thread-safe).

    A frame that finds no unused buffer of its size gets a new one, which
    takes the place of the least recently used unused buffer when the pool is
    full; when every buffer is in use it gets None, and is read into fresh
    memory (a new buffer is zero-filled first, which would cost more).
    """

    def __init__(self, max_buffers: int) -> None:
        self.max_buffers = max_buffers
        self._buffers: list[bytearray] = []  # least recently handed out first
        self._lock = threading.Lock()

    def __call__(self, size: int) -> bytearray | None:
        """A buffer of ``size`` bytes that nothing else refers to (contents undefined),
        or None when the pool is full and every buffer in use."""
        with self._lock:
            buffers = self._buffers
            for i in range(len(buffers)):
                if len(buffers[i]) == size and _references(buffers, i) == _UNUSED:
                    buffer = buffers.pop(i)
                    buffers.append(buffer)
                    return buffer
            if len(buffers) >= self.max_buffers:
                unused = [i for i in range(len(buffers)) if _references(buffers, i) == _UNUSED]
                if not unused:
                    return None
                del buffers[unused[0]]
            buffer = bytearray(size)
            buffers.append(buffer)
            return buffer

    def __len__(self) -> int:
        return len(self._buffers)
