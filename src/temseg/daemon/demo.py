"""``temseg demo``: the whole live chain on synthetic frames, in one process.

A temporary acquisition folder is watched by an in-process :class:`Daemon`;
a writer thread plays the camera, writing simulated Au and CdSe frames
(material in the ImageDescription JSON) at a steady rate, alternately
streamed slowly in chunks under their final name and written as ``.part``
then renamed into place. A :class:`~temseg.stream.Subscriber` prints one line
per mask received; a summary closes the run.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from temseg.config import Settings
from temseg.daemon.service import Daemon
from temseg.frames.write import write_frame_tiff
from temseg.stream import Subscriber
from temseg.synth import simulate_frame

MATERIALS = ("Au", "CdSe")
CHUNKS = 8  # pieces a slowly written frame arrives in


@dataclass
class DemoSummary:
    """What a demo run saw. Latencies in ms (file complete -> record), sizes in pixels."""

    frames: int
    masks: int = 0
    errors: int = 0
    particles: int = 0
    true_particles: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    db: str = ""
    kept: bool = False
    elapsed_s: float = 0.0

    @property
    def mean_latency_ms(self) -> float | None:
        return sum(self.latencies_ms) / len(self.latencies_ms) if self.latencies_ms else None


def _camera(
    acq: Path,
    staging: Path,
    n_frames: int,
    size: int,
    interval_s: float,
    truth: dict[str, int],
    stop: threading.Event,
) -> None:
    """Write ``n_frames`` simulated frames into ``acq``, one every ``interval_s`` seconds."""
    start = time.monotonic()
    for i in range(n_frames):
        if stop.wait(max(0.0, start + i * interval_s - time.monotonic())):
            return
        material = MATERIALS[i % len(MATERIALS)]
        frame = simulate_frame(material, size, seed=i)
        pixel_nm = float(frame.metadata["pixel_nm"])
        name = f"frame_{i:04d}.tif"
        truth[str(acq / name)] = int(frame.metadata["n_particles"])
        metadata = {"material": material}
        if i % 2 == 0:  # streamed in chunks under its final name, closed at the end
            data = write_frame_tiff(
                staging / name, frame.image, pixel_nm=pixel_nm, metadata=metadata
            ).read_bytes()
            step = -(-len(data) // CHUNKS)
            with open(acq / name, "wb") as fh:
                for offset in range(0, len(data), step):
                    fh.write(data[offset : offset + step])
                    fh.flush()
                    time.sleep(interval_s / (4 * CHUNKS))
        else:  # written as NAME.part, then renamed into place
            write_frame_tiff(acq / name, frame.image, pixel_nm=pixel_nm, metadata=metadata)


def run_demo(
    *,
    frames: int = 12,
    size: int = 256,
    interval_s: float = 0.4,
    db: str | None = None,
    publish: str | None = None,
    model: str | None = None,
    keep: bool = False,
    echo: Callable[[str], object] = print,
) -> DemoSummary:
    """Run the live demo and return its summary; ``echo`` receives each printed line.

    ``size`` is the frame side in pixels; ``db`` defaults to a file in the
    temporary folder, which is deleted at the end unless ``keep``.
    """
    if frames < 1 or size < 32:
        raise ValueError("need at least 1 frame of at least 32 pixels")
    work = Path(tempfile.mkdtemp(prefix="temseg-demo-")).resolve()
    acq, staging = work / "acquisition", work / "staging"
    acq.mkdir()
    staging.mkdir()
    summary = DemoSummary(
        frames=frames, db=db or str(work / "temseg.db"), kept=keep or db is not None
    )
    settings = Settings(
        watch=acq,
        db=summary.db,
        publish=publish or "tcp://127.0.0.1:0",
        model=model,
        stable_s=0.5,
    )
    started = time.monotonic()
    daemon = Daemon(settings)
    stop = threading.Event()
    truth: dict[str, int] = {}
    try:
        daemon.start()
        model_info = daemon.model
        echo(
            f"daemon ready: watching {acq}, publishing on {daemon.bound_url}, "
            f"model {model_info.model_id if model_info else '?'} "
            f"({model_info.engine.name if model_info else '?'})"
        )
        assert daemon.bound_url is not None
        with Subscriber(daemon.bound_url, timeout_ms=500) as sub:
            time.sleep(0.3)  # let the subscription reach the publisher
            camera = threading.Thread(
                target=_camera,
                args=(acq, staging, frames, size, interval_s, truth, stop),
                name="demo-camera",
            )
            camera.start()
            echo(f"camera: writing {frames} frames of {size}x{size} px every {interval_s:g} s")
            deadline = time.monotonic() + frames * interval_s + 30
            while summary.masks + summary.errors < frames and time.monotonic() < deadline:
                message = sub.receive()
                if message is None:
                    continue
                header = message.header
                name = Path(str(header.get("source", "?"))).name
                if message.is_error:
                    summary.errors += 1
                    echo(f"seq={header['seq']:<3} ERROR {name}: {header.get('error')}")
                    continue
                summary.masks += 1
                summary.particles += int(header["n_particles"])
                summary.true_particles += truth.get(str(header.get("source")), 0)
                summary.latencies_ms.append(float(header["latency_ms"]))
                simulated = truth.get(str(header.get("source")), "?")
                echo(
                    f"seq={header['seq']:<3} {name}  material={header['material']:<5} "
                    f"particles={header['n_particles']} (simulated {simulated})"
                    f"  latency={header['latency_ms']:.0f} ms"
                )
            summary.gaps = list(sub.gaps)
            stop.set()
            camera.join()
    finally:
        stop.set()
        daemon.stop()
        summary.elapsed_s = time.monotonic() - started
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    _print_summary(summary, work, echo)
    return summary


def _print_summary(summary: DemoSummary, work: Path, echo: Callable[[str], object]) -> None:
    mean = summary.mean_latency_ms
    echo(
        f"summary: {summary.masks} masks and {summary.errors} errors for {summary.frames} frames "
        f"in {summary.elapsed_s:.1f} s; {summary.particles} particles found "
        f"({summary.true_particles} simulated); mean latency "
        + ("n/a" if mean is None else f"{mean:.0f} ms")
        + f"; seq gaps: {summary.gaps or 'none'}"
    )
    if summary.kept:
        echo(f"database: {summary.db}")
        if (work / "acquisition").is_dir():
            echo(f"frames: {work / 'acquisition'}")
    else:
        echo(f"database: {summary.db} (temporary, removed; --keep or --db keeps it)")
