"""Particles of one mask: temseg's labelling (scipy.ndimage, windowed) against OpenCV.

The mask is a simulated frame's true mask (as dense as 3 particles in a
512 px frame), thresholded as the daemon thresholds it. OpenCV
(``opencv-python-headless``, not a temseg dependency) is timed when it
imports: ``connectedComponentsWithStats`` (areas, boxes, centroids, as
temseg's particles need them) with its default and one thread, and
``connectedComponents`` (labels only)::

    python benchmarks/bench_labelling.py --size 4096 --repeats 9
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable

import numpy as np

from temseg.bench.stats import median_ms
from temseg.segment import binarize, measure_particles
from temseg.synth import frame_seed, simulate_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="frame side, pixels")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    particles = max(1, round(3 * (args.size / 512) ** 2))
    synthetic = simulate_frame("Au", args.size, frame_seed(0, "Au", 0), n_particles=particles)
    mask = binarize(synthetic.mask.astype(np.float32), 0.5)
    binary = mask.view(bool)
    found, _ = measure_particles(binary)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("temseg measure_particles (scipy, windowed)", lambda: measure_particles(binary)),
    ]
    if importlib.util.find_spec("cv2"):
        import cv2

        def with_stats() -> object:
            return cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)

        def labels_only() -> object:
            return cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)

        threads = cv2.getNumThreads()
        n = with_stats()[0] - 1
        assert n == len(found), f"OpenCV found {n} components, temseg {len(found)}"
        steps += [
            (f"OpenCV connectedComponentsWithStats, {threads} threads", with_stats),
            (f"OpenCV connectedComponents (labels only), {threads} threads", labels_only),
        ]
        cv2.setNumThreads(1)
        steps.append(("OpenCV connectedComponentsWithStats, 1 thread", with_stats))
    else:
        print("OpenCV not installed: temseg's labelling only")
    print(f"{args.size} x {args.size} px mask, {len(found)} particles, median of {args.repeats}")
    for name, step in steps:
        print(f"  {name:<58} {median_ms(step, args.repeats):6.1f} ms")


if __name__ == "__main__":
    main()
