"""CPU cost of the daemon's work outside the engine, per frame, and how it spreads over threads.

On a GPU the engine takes a few ms per frame even at 4096 x 4096 px; what
limits the daemon then is the host: reading (SHA-256, TIFF decode, model
input), segmenting (probability back on the frame's grid, threshold,
particles) and recording (the database row with its particles, the mask
message with its particle list); a subscriber then decodes each message
(raw or PackBits). This measures each step on one core, then the frames/s
of the reader and segmenter steps with 1..K threads working on different
frames::

    python benchmarks/bench_host.py --size 4096 --threads 1 2

The probability map is the simulated frame's true mask (the particles a good
model finds), so particle counts are realistic. Nothing here needs a GPU.

How threads scale on a many-core host is bounded by Python's GIL: only one
thread runs Python at a time, so the time each step holds the GIL per frame
caps the daemon's frames/s whatever the core count. ``--gil`` runs the steps
under py-spy (``pip install py-spy``), sampling only the thread that holds
the GIL, and prints each step's GIL-held ms per call beside its time::

    python benchmarks/bench_host.py --size 4096 --gil
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import tifffile

from temseg.bench.stats import median_ms
from temseg.daemon.read_buffers import ReadBuffers
from temseg.daemon.safe_read import read_listed
from temseg.daemon.segment_pool import SegmentPool
from temseg.frames import read_frame
from temseg.inference import prepare_input, to_frame_grid
from temseg.model.bundle import load_bundle
from temseg.segment import segment_mask, segment_probability
from temseg.store import connect, record_frame
from temseg.stream.protocol import decode_message, encode_mask, encode_mask_message
from temseg.synth import simulate_frame


def frames_per_s(work: Callable[[], object], threads: int, frames: int) -> float:
    """``frames`` calls of ``work`` spread over ``threads`` threads, per second."""
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda _: work(), range(threads)):  # start and warm the threads
            pass
        start = time.perf_counter()
        for _ in pool.map(lambda _: work(), range(frames)):
            pass
        return frames / (time.perf_counter() - start)


#: py-spy's samples per second in ``--gil`` mode (fewer disturb the steps less).
GIL_SAMPLE_RATE = 250


def gil_report(size: int, repeats: int) -> None:
    """Each step's time and GIL-held time per call, from py-spy samples of this script."""
    spy = shutil.which("py-spy")
    if spy is None:
        sys.exit("--gil needs py-spy on PATH (pip install py-spy)")
    calls = repeats + 1
    with tempfile.TemporaryDirectory(prefix="bench-host-gil-") as tmp:
        raw = Path(tmp) / "samples.txt"
        spy_options = ["--gil", "--rate", str(GIL_SAMPLE_RATE), "--format", "raw", "--output"]
        child = [sys.executable, __file__, "--size", str(size), "--repeats", str(repeats)]
        rows = subprocess.run(
            [spy, "record", *spy_options, str(raw), "--", *child, "--steps-only"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        rows = [row for row in rows if row.count("\t") == 2]  # not py-spy's own lines
        samples = raw.read_text().splitlines()
    print(f"{size} x {size} px uint16 frame; {calls} calls per step, {GIL_SAMPLE_RATE} samples/s")
    print(f"  {'step':40s} {'ms/call':>8s} {'GIL ms/call':>12s}  (means)")
    # The worker pool's own threads in this process (feeding calls to the workers,
    # taking results back) hold the GIL outside the step functions: counted to the step
    # that uses the pool.
    pool_threads = ("concurrent/futures/process.py", "multiprocessing/")
    pool_held = sum(
        int(line.rsplit(" ", 1)[1])
        for line in samples
        if "main.<locals>." not in line and any(mark in line for mark in pool_threads)
    )
    for row in rows:
        function, name, ms = row.split("\t")
        frame = f"main.<locals>.{function} ("
        held = sum(int(line.rsplit(" ", 1)[1]) for line in samples if frame in line)
        held += pool_held if function == "particles_in_worker" else 0
        print(f"  {name:44s} {float(ms):8.1f} {held / GIL_SAMPLE_RATE * 1e3 / calls:12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="frame side, pixels")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gil", action="store_true", help="GIL-held ms per step (py-spy)")
    parser.add_argument("--steps-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gil:
        gil_report(args.size, args.repeats)
        return

    bundle = load_bundle(None)
    particles = max(1, round(3 * (args.size / 512) ** 2))  # as dense as a 512 px frame with 3
    synthetic = simulate_frame(
        "Au", args.size, seed=0, pixel_nm=bundle.pixel_nm or 0.05, n_particles=particles
    )
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, synthetic.image, metadata={"pixel_nm": bundle.pixel_nm})
    data = buffer.getvalue()
    path = Path("frame.tif")  # only named in messages: the bytes are passed in
    frame = read_frame(path, data=data)
    x = prepare_input(frame.image, bundle, frame.pixel_nm)
    h, w = x.grid_shape
    model_probability = synthetic.mask.astype(np.float32)[:h, :w]
    seg = segment_probability(to_frame_grid(model_probability, x.frame_shape), 0.5, frame.pixel_nm)

    def sha256() -> object:
        return hashlib.sha256(data).hexdigest()

    on_disk = Path(tempfile.mkdtemp(prefix="bench-host-")) / "frame.tif"
    on_disk.write_bytes(data)  # in the page cache, as a file the daemon was just told of

    buffers = ReadBuffers(2)

    def file_read() -> object:  # the daemon's checked read (no links, size cap, deadline)
        return read_listed(on_disk, on_disk.parent, max_bytes=len(data) + 1, into=buffers)

    def file_read_fresh() -> object:  # the same into fresh memory, as before read buffers
        return read_listed(on_disk, on_disk.parent, max_bytes=len(data) + 1)

    def blake3_digest() -> object:  # a comparison: identity is SHA-256
        import blake3

        return blake3.blake3(data).hexdigest()

    def decode() -> object:
        return read_frame(path, data=data)

    def model_input() -> object:
        return prepare_input(frame.image, bundle, None)

    def read() -> object:
        sha256()
        f = read_frame(path, data=data)
        return prepare_input(f.image, bundle, f.pixel_nm)

    def frame_grid() -> object:
        return to_frame_grid(model_probability, x.frame_shape)

    def particles() -> object:
        return segment_probability(model_probability, 0.5, frame.pixel_nm)

    def device_mask_particles() -> object:
        return segment_mask(seg.mask, 0.5, frame.pixel_nm)

    database = connect(f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-host-')) / 'host.db'}")
    recorded = itertools.count()

    def record() -> object:
        return record_frame(
            database,
            source_path=f"frame_{next(recorded)}.tif",
            sha256="0" * 64,
            size_bytes=len(data),
            status="done",
            received_at=datetime.now(UTC),
            n_particles=seg.n_particles,
            particles=seg.particles,
        )

    def message() -> object:
        header = {"material": "Au", "particles": [p.to_dict() for p in seg.particles]}
        return encode_mask_message(header, seg.mask)

    def packbits() -> object:
        return encode_mask(seg.mask, "packbits")

    header = {
        "material": "Au",
        "seq": 1,
        "run_id": "bench",
        "particles": [p.to_dict() for p in seg.particles],
    }
    sent = {e: encode_mask_message(header, seg.mask, encoding=e) for e in ("raw", "packbits")}

    def receive_raw() -> object:
        return decode_message(sent["raw"])

    def receive_packbits() -> object:
        return decode_message(sent["packbits"])

    def segment() -> object:
        probability = to_frame_grid(model_probability, x.frame_shape)
        return segment_probability(probability, 0.5, frame.pixel_nm)

    pool = SegmentPool(max(args.threads))  # segmenter_processes: one worker per segmenter
    pool.start()

    def particles_in_worker() -> object:
        return segment_probability(model_probability, 0.5, frame.pixel_nm, measure=pool.measure)

    def segment_in_workers() -> object:
        probability = to_frame_grid(model_probability, x.frame_shape)
        return segment_probability(probability, 0.5, frame.pixel_nm, measure=pool.measure)

    steps: list[tuple[str, Callable[[], object]]] = [
        ("reader: file read (one open), into a read buffer", file_read),
        ("reader: file read into fresh memory", file_read_fresh),
        ("reader: SHA-256", sha256),
        *(
            [("reader: BLAKE3, for comparison", blake3_digest)]
            if importlib.util.find_spec("blake3")
            else []
        ),
        ("reader: TIFF decode", decode),
        ("reader: model input (normalise, pad)", model_input),
        ("segmenter: to frame grid", frame_grid),
        ("segmenter: threshold + particles", particles),
        ("segmenter: the same, particles in a worker", particles_in_worker),
        ("segmenter: particles of a device-made mask", device_mask_particles),
        ("segmenter: PackBits mask (mask_encoding)", packbits),
        ("recorder: database record (SQLite)", record),
        ("recorder: mask message with particles", message),
        ("subscriber: decode a raw mask message", receive_raw),
        ("subscriber: decode a PackBits mask message", receive_packbits),
    ]
    if args.steps_only:  # the process py-spy samples for --gil: mean over all calls
        for name, step in steps:
            start = time.perf_counter()
            for _ in range(args.repeats + 1):
                step()
            ms = (time.perf_counter() - start) * 1e3 / (args.repeats + 1)
            print(f"{step.__name__}\t{name}\t{ms:.2f}", flush=True)
        pool.close()
        shutil.rmtree(on_disk.parent)
        return
    print(
        f"{args.size} x {args.size} px uint16 frame, {seg.n_particles} particles; "
        f"median of {args.repeats}, one thread"
    )
    for name, step in steps:
        print(f"  {name:44s} {median_ms(step, args.repeats):8.1f} ms")
    steps_in_threads = (
        ("reader", read),
        ("segmenter", segment),
        ("segmenter, particles in workers", segment_in_workers),
    )
    for label, work in steps_in_threads:
        for threads in args.threads:
            rate = frames_per_s(work, threads, threads * args.repeats)
            print(f"  {label} step, {threads} thread(s): {rate:7.1f} frames/s")
    pool.close()
    shutil.rmtree(on_disk.parent)


if __name__ == "__main__":
    main()
