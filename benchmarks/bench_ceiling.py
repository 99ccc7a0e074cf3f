"""How many frames/s the daemon's host side sustains when the engine takes a fixed time.

Everything is the real daemon (watcher, readers, frame queue, segmenters,
recorder, SQLite, ZeroMQ to a subscriber on 127.0.0.1), except the engine:
a stand-in returns one fixed probability map (a simulated frame's particles,
so segmentation does realistic work) after sleeping ``--engine-ms`` in ten
slices, the way a GPU engine leaves the CPU (and the GIL) while it waits for
the device, and has to take the GIL back after each launch and sync. The answer
is the host's ceiling for a GPU that fast, measured on any machine, GPU or
not::

    python benchmarks/bench_ceiling.py --size 4096 --frames 60 --engine-ms 5.5

Prints the burst's frames/s, the paced latency with its breakdown, and each
thread group's CPU per frame. The stand-in takes one frame per call, as a
compiled engine does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import temseg.daemon.models
import temseg.daemon.service
from temseg.bench.daemon_stage import bench_daemon
from temseg.bench.stages import write_frames
from temseg.inference import GPU_TILE
from temseg.model.bundle import ModelBundle, load_bundle
from temseg.synth import DEFAULT_PIXEL_NM, frame_seed, simulate_frame

#: A GPU engine call gives the GIL back many times (kernel launches, copies, the final
#: sync) and must take it again each time; the stand-in sleeps its time in as many slices.
GIL_RELEASES_PER_CALL = 10


class StandInEngine:
    """``probability`` (H, W) for a (1, 1, H, W) batch after ``delay_s`` seconds, else zeros."""

    backend = "stand-in"
    name = "stand-in"
    device = "cpu"
    precision = "fp32"
    compiled = True  # one frame per call, as a compiled GPU engine takes them
    batches = False

    def __init__(self, probability: np.ndarray, delay_s: float) -> None:
        self._batch = np.ascontiguousarray(probability, dtype=np.float32)[None]
        self._delay_s = delay_s

    def predict(self, batch: np.ndarray) -> np.ndarray:
        for _ in range(GIL_RELEASES_PER_CALL):
            time.sleep(self._delay_s / GIL_RELEASES_PER_CALL)
        if batch.shape[0] == 1 and batch.shape[2:] == self._batch.shape[1:]:
            return self._batch  # read only by the daemon: no copy, like a GPU engine's result
        return np.zeros((batch.shape[0], *batch.shape[2:]), dtype=np.float32)

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="frame side, pixels")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--paced", type=int, default=10)
    parser.add_argument("--engine-ms", type=float, default=5.5, help="stand-in engine time")
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=None,
        help="GIL switch interval while the daemon runs (default: the daemon's own)",
    )
    parser.add_argument(
        "--segmenter-processes",
        action="store_true",
        help="measure particles in worker processes (the daemon setting)",
    )
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        temseg.daemon.service.GIL_SWITCH_INTERVAL_S = args.switch_interval_ms / 1e3

    bundle = load_bundle(None)
    pixel_nm = bundle.pixel_nm or DEFAULT_PIXEL_NM
    seed = frame_seed(0, "Au", 0)
    particles = max(1, round(3 * (args.size / 512) ** 2))  # as dense as 3 in a 512 px frame
    synthetic = simulate_frame("Au", args.size, seed, pixel_nm=pixel_nm, n_particles=particles)
    probability = synthetic.mask

    def stand_in(model: ModelBundle, **_options: object) -> StandInEngine:
        return StandInEngine(probability, args.engine_ms / 1e3)

    temseg.daemon.models.load_engine = stand_in  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="temseg-ceiling-") as tmp:
        work = Path(tmp)
        paths = write_frames(work / "frames", args.frames, args.size, pixel_nm=pixel_nm)
        assert bundle.path is not None
        burst, paced = bench_daemon(
            paths,
            work / "daemon",
            model=bundle.path,
            backend="auto",
            device="cpu",
            threads=0,
            paced=args.paced,
            tile=GPU_TILE,  # frames of up to 4096 px in one piece, as on a GPU
            host_priority="normal",  # as on a GPU: the host threads are the bottleneck
            segmenter_processes=args.segmenter_processes,
            on_status=lambda text: print(f"ceiling: {text}", file=sys.stderr, flush=True),
        )
    switch_ms = temseg.daemon.service.GIL_SWITCH_INTERVAL_S * 1e3
    print(
        f"{args.size} x {args.size} px, {args.frames} frames, stand-in engine "
        f"{args.engine_ms:g} ms per frame, GIL switch interval {switch_ms:g} ms, particles "
        f"measured in {'worker processes' if args.segmenter_processes else 'segmenter threads'}"
    )
    print(
        f"  burst: {burst.frames_per_s:.1f} frames/s, latency p50 {burst.ms_p50:.0f} ms, "
        f"CPU {burst.cpu_ms_per_frame:.0f} ms/frame"
    )
    if paced is not None:
        steps = ", ".join(
            f"{step} {paced.details[f'daemon_{step}_ms_p50']:.1f}"
            for step in ("read", "infer", "segment")
        )
        print(f"  paced: latency p50 {paced.ms_p50:.1f} ms ({steps} ms)")
    split = burst.details["cpu_ms_per_frame_by_thread"]
    print("  CPU ms per frame by thread: " + ", ".join(f"{k} {v:.1f}" for k, v in split.items()))


if __name__ == "__main__":
    main()
