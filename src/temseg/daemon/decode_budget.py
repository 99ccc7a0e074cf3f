"""A budget of decoded bytes shared by the readers.

``max_pixels`` bounds one frame, but readers decode several frames at once,
and a compressed TIFF of a few hundred kilobytes can decode to half a
gigabyte: six such files drove the daemon to 5.8 GB. Each reader reserves
the bytes its frame will take once decoded (with the working copies made
for the model) before decoding, and releases them when the frame's input
is ready; a reader whose frame does not fit waits for the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from temseg.frames import FrameError


class DecodeBudget:
    """At most ``total_bytes`` reserved at once, across threads."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = int(total_bytes)
        self.reserved = 0
        self._cond = threading.Condition()

    def reserve(self, nbytes: int, what: str, stop: Callable[[], bool]) -> bool:
        """Wait until ``nbytes`` fit, then reserve them; False if ``stop()`` became true.

        A frame that alone needs more than the whole budget raises
        :class:`~temseg.frames.FrameError` naming ``what`` (the file): its verdict.
        """
        if nbytes > self.total_bytes:
            raise FrameError(
                f"{what}: decoding needs {nbytes} bytes, above max_decoded_bytes "
                f"({self.total_bytes} bytes)"
            )
        with self._cond:
            while self.reserved + nbytes > self.total_bytes:
                if stop():
                    return False
                self._cond.wait(timeout=0.1)
            self.reserved += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.reserved -= nbytes
            self._cond.notify_all()
