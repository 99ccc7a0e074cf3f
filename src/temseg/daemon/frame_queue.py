"""The bounded hand-off between the reader threads and the inference thread.

:class:`FrameQueue` is a FIFO with a maximum size whose ``put`` blocks while
it is full (back-pressure towards the watcher, never a dropped frame) and
whose ``take_batch`` returns the frames that arrived together, up to a
batch size, sharing one batching key (e.g. the padded image shape).
:class:`SeenCache` remembers recently handled (path, SHA-256) identities so
that duplicate events for the same bytes cost no database query.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Stopped(Exception):
    """Raised by a blocking queue operation when the stop event is set."""


class FrameQueue(Generic[T]):
    """Bounded FIFO with stop-aware blocking ``put`` and batching ``take_batch``."""

    def __init__(self, maxsize: int, stop: threading.Event) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.high_water = 0  # most items ever queued at once
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._stop = stop

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T, poll_s: float = 0.1) -> None:
        """Append ``item``, waiting while the queue is full; raise :class:`Stopped` on stop."""
        with self._cond:
            while len(self._items) >= self.maxsize:
                if self._stop.is_set():
                    raise Stopped
                self._cond.wait(poll_s)
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()

    def take_batch(
        self, max_items: int, key: Callable[[T], Hashable], timeout_s: float = 0.1
    ) -> list[T]:
        """Up to ``max_items`` items from the head that share the head's ``key``.

        Waits at most ``timeout_s`` for a first item and returns [] if none
        came. Items behind the first one with a different key stay queued, in
        order, for the next batch.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            first = self._items.popleft()
            batch = [first]
            head_key = key(first)
            while self._items and len(batch) < max_items and key(self._items[0]) == head_key:
                batch.append(self._items.popleft())
            self._cond.notify_all()
            return batch

    def clear(self) -> list[T]:
        """Remove and return everything still queued."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items


class SeenCache:
    """Thread-safe set of the last ``capacity`` identities (least recently added evicted)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._items: OrderedDict[Hashable, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, identity: Hashable) -> bool:
        """Remember ``identity``; False if it was already there."""
        with self._lock:
            if identity in self._items:
                self._items.move_to_end(identity)
                return False
            self._items[identity] = None
            if len(self._items) > self._capacity:
                self._items.popitem(last=False)
            return True

    def discard(self, identity: Hashable) -> None:
        with self._lock:
            self._items.pop(identity, None)
