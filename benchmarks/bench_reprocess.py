"""Archive reprocessing throughput on a local Dask cluster, and what recording a result
costs on SQLite and on PostgreSQL.

Reprocessing: ``--frames`` simulated frames of ``--size`` px (Au and CdSe, 0.05 nm/px)
are reprocessed with the bundled model into a fresh SQLite database by a local
cluster of each ``--workers`` count (worker processes, one task at a time each,
engine threads ``--threads``, default cores / workers), ``--repeats`` times; frames/s is over the
segmentation phase (first task submitted to last result recorded), the cluster's
start is reported apart. Recording: ``--records`` results of one simulated frame's
segmentation (its particles included) are recorded one at a time with
:func:`temseg.store.record_frame`, into a fresh SQLite file and, with ``--pg-url``
(a server database where tables may be created), into PostgreSQL::

    python benchmarks/bench_reprocess.py --size 512 --frames 60 --workers 1 2 --repeats 3 \\
        --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import text

from temseg import store
from temseg.bench.stages import write_frames
from temseg.config import Settings
from temseg.reprocess import reprocess
from temseg.segment import segment_probability
from temseg.synth import simulate_frame


def reprocess_runs(
    folder: Path, workers: int, repeats: int, threads: int
) -> list[tuple[float, float, int]]:
    """(frames/s, seconds before the first task, frames) of each run into a fresh database."""
    runs = []
    for r in range(repeats):
        db = store.connect(folder.parent / f"r{workers}_{r}.db")
        try:
            started = time.monotonic()
            settings = Settings(threads=threads)
            summary = reprocess([folder], db, model="bundled", settings=settings, workers=workers)
        finally:
            db.dispose()
        setup_s = summary.elapsed_s - summary.segment_s
        assert summary.done == summary.found, summary
        runs.append((summary.frames_per_s, setup_s, summary.done))
        print(
            f"  workers={workers} run {r + 1}: {summary.frames_per_s:.2f} frames/s over "
            f"{summary.segment_s:.1f} s, start {setup_s:.1f} s "
            f"({time.monotonic() - started:.1f} s in all)"
        )
    return runs


def record_cost_ms(url: str, n: int, size: int) -> list[float]:
    """Milliseconds per :func:`record_frame` of ``n`` results with one frame's particles."""
    frame = simulate_frame("Au", size, 7)
    seg = segment_probability(frame.mask.astype(np.float32), 0.5, 0.05)
    engine = store.connect(url)
    try:
        with engine.begin() as conn:  # a database of earlier runs is emptied first
            conn.execute(text("DELETE FROM particles"))
            conn.execute(text("DELETE FROM frames"))
        times = []
        for i in range(n):
            start = time.perf_counter()
            store.record_frame(
                engine,
                source_path=f"/archive/frame_{i:05d}.tif",
                sha256=f"{i:064x}",
                size_bytes=size * size * 2,
                status="done",
                material="Au",
                model_id="bench",
                threshold=0.5,
                n_particles=seg.n_particles,
                area_fraction=seg.area_fraction,
                height=size,
                width=size,
                pixel_nm=0.05,
                instrument="bench",
                particles=seg.particles,
            )
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        engine.dispose()
    print(f"  {url.split('://')[0]}: {seg.n_particles} particles per frame")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="engine threads per worker (0: cores / workers)"
    )
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--pg-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="temseg-reprocess-") as tmp:
        folder = Path(tmp) / "archive"
        write_frames(folder, args.frames, args.size)
        medians = {}
        for workers in args.workers:
            runs = reprocess_runs(folder, workers, args.repeats, args.threads)
            medians[workers] = statistics.median(r[0] for r in runs)
            start = statistics.median(r[1] for r in runs)
            print(f"workers={workers}: median {medians[workers]:.2f} frames/s, start {start:.1f} s")
        if 1 in medians:
            for workers, fps in medians.items():
                print(f"scaling {workers} worker(s) / 1 worker: {fps / medians[1]:.2f}")
        urls = [f"sqlite:///{Path(tmp) / 'record.db'}"]
        if args.pg_url:
            urls.append(args.pg_url)
        for url in urls:
            times = record_cost_ms(url, args.records, args.size)
            p50, p99 = np.percentile(times, [50, 99])
            print(f"record {url.split('://')[0]}: p50 {p50:.2f} ms, p99 {p99:.2f} ms per frame")


if __name__ == "__main__":
    main()
