"""What the live page shows, built from the stream's messages (no web framework here).

:class:`ViewState` takes each :class:`~temseg.stream.protocol.StreamMessage`
and keeps the newest frame (its name, material, particle count and size
histogram, model, threshold, image and mask overlay as PNG data URLs), the
frames and latencies per second over the last ``window_s`` seconds, and the
recent errors. :meth:`ViewState.snapshot` is the JSON the page receives.

The frame image comes from the message's ``preview`` (the daemon's
``send_preview_px``), else from the source file when this machine can read
it, else the page shows the mask alone.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from temseg.stream.preview import downsample, frame_preview, png_bytes
from temseg.stream.protocol import StreamMessage

#: Longest side (pixels) of the image made from a source file, and of the overlay.
PREVIEW_PX = 512
#: RGBA of mask pixels in the overlay.
OVERLAY_RGBA = (255, 64, 32, 110)
#: Bins of the particle size histogram.
HISTOGRAM_BINS = 12


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def overlay_png(mask: np.ndarray, shape: tuple[int, int]) -> bytes:
    """An RGBA PNG of ``mask`` (0/1) fitting ``shape``: mask pixels coloured, others clear."""
    small = downsample(mask.astype(np.float32, copy=False), max(shape)) >= 0.5
    rgba = np.zeros((*small.shape, 4), np.uint8)
    rgba[small] = OVERLAY_RGBA
    return png_bytes(rgba)


def size_histogram(particles: list[dict[str, Any]]) -> dict[str, Any]:
    """Equivalent diameters (nm when the frame's pixel size is known, else px) in bins."""
    in_nm = all(p.get("equiv_diameter_nm") is not None for p in particles)
    key = "equiv_diameter_nm" if in_nm else "equiv_diameter_px"
    sizes = np.array([float(p.get(key) or 0.0) for p in particles])
    unit = "nm" if in_nm else "px"
    if sizes.size == 0:
        return {"unit": unit, "edges": [], "counts": []}
    counts, edges = np.histogram(sizes, bins=HISTOGRAM_BINS)
    return {"unit": unit, "edges": [round(float(e), 3) for e in edges], "counts": counts.tolist()}


def source_image(source: str) -> dict[str, Any] | None:
    """The preview of a frame file this machine can read, else None."""
    from temseg.frames import FrameError, read_frame

    try:
        frame = read_frame(Path(source))
    except (FrameError, OSError, ValueError, MemoryError):
        return None
    return frame_preview(frame.image, PREVIEW_PX)


class ViewState:
    """See the module docstring. Thread-safe: one thread adds, others read snapshots."""

    def __init__(self, source: str, *, window_s: float = 300.0, max_errors: int = 10) -> None:
        self.source = source  # the stream's endpoint, for the page
        self.window_s = window_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.version = 0
        self._latest: dict[str, Any] | None = None
        self._errors: deque[dict[str, Any]] = deque(maxlen=max_errors)
        self._done: deque[tuple[float, float]] = deque()  # (time.time(), latency s)
        self.received = 0
        self.gaps = 0

    def add(self, message: StreamMessage, *, gaps: int = 0) -> None:
        """Take one message (``gaps``: the subscriber's count of missed ranges so far)."""
        header, now = message.header, time.time()
        name = Path(str(header.get("source", "?"))).name
        if message.is_error:
            entry = {"name": name, "error": str(header.get("error", "")), "at": now}
            with self._changed:
                self._errors.appendleft(entry)
                self._bump(gaps)
            return
        latest = self._frame(message, name)
        with self._changed:
            self._latest = latest
            self._done.append((now, float(header.get("latency_ms", 0.0)) / 1e3))
            self._bump(gaps)

    def _bump(self, gaps: int) -> None:
        self.received += 1
        self.gaps = gaps
        self.version += 1
        self._changed.notify_all()

    def _frame(self, message: StreamMessage, name: str) -> dict[str, Any]:
        header, mask = message.header, message.mask
        assert mask is not None  # a mask message
        preview = header.get("preview") or source_image(str(header.get("source", "")))
        image, shape = None, tuple(mask.shape)
        if isinstance(preview, dict) and "png" in preview:
            image = "data:image/png;base64," + str(preview["png"])
            shape = tuple(int(n) for n in preview["shape"])
        return {
            "name": name,
            "relative_path": header.get("relative_path", name),
            "material": header.get("material", ""),
            "n_particles": int(header.get("n_particles", 0)),
            "area_fraction": header.get("area_fraction"),
            "histogram": size_histogram(list(header.get("particles", []))),
            "model_id": header.get("model_id", ""),
            "backend": header.get("backend", ""),
            "threshold": header.get("threshold"),
            "latency_s": float(header.get("latency_ms", 0.0)) / 1e3,
            "seq": header.get("seq"),
            "image": image,
            "overlay": _data_url(overlay_png(mask, (shape[0], shape[1]))),
        }

    def wait_change(self, version: int, timeout_s: float) -> int:
        """Block until :attr:`version` differs from ``version`` (or ``timeout_s``); return it."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != version, timeout_s)
            return self.version

    def snapshot(self) -> dict[str, Any]:
        """The page's JSON: newest frame, per-minute throughput and latency, errors."""
        now = time.time()
        with self._lock:
            while self._done and self._done[0][0] < now - self.window_s:
                self._done.popleft()
            done = list(self._done)
            latest = self._latest
            errors = list(self._errors)
            version, received, gaps = self.version, self.received, self.gaps
        return {
            "version": version,
            "source": self.source,
            "received": received,
            "gaps": gaps,
            "latest": latest,
            "seconds_behind": None if latest is None else latest["latency_s"],
            "timeline": _timeline(done, now, self.window_s),
            "errors": [
                {"name": e["name"], "error": e["error"], "ago_s": round(now - e["at"], 1)}
                for e in errors
            ],
        }


def _timeline(done: list[tuple[float, float]], now: float, window_s: float) -> dict[str, Any]:
    """Frames per minute and mean latency (s) per 10 s bin over the window, oldest first."""
    bin_s = 10.0
    n = max(1, int(window_s // bin_s))
    counts = [0] * n
    latency = [0.0] * n
    for at, latency_s in done:
        i = n - 1 - int((now - at) // bin_s)
        if 0 <= i < n:
            counts[i] += 1
            latency[i] += latency_s
    return {
        "bin_s": bin_s,
        "frames_per_min": [c * 60.0 / bin_s for c in counts],
        "latency_s": [round(t / c, 3) if c else None for t, c in zip(latency, counts, strict=True)],
    }
