"""Particles of one mask: temseg's labelling (run by run, or scipy.ndimage), OpenCV, cc3d.

The mask is a simulated frame's true mask (as dense as 3 particles in a
512 px frame), thresholded as the daemon thresholds it, or with ``--noise P``
random pixels (each in the mask with probability P, then one step of a
3 x 3 majority filter when ``--smooth``), the case where scipy's labelling
is the faster one. temseg's ``measure_particles`` is timed as it chooses and
with scipy's labelling forced. OpenCV
(``opencv-python-headless``, not a temseg dependency) is timed when it
imports: ``connectedComponentsWithStats`` (areas, boxes, centroids, as
temseg's particles need them) with its default and one thread, and
``connectedComponents`` (labels only), and so is cc3d
(``connected-components-3d``, LGPL, not a temseg dependency either), and
with CuPy and a CUDA device, ``cupyx.scipy.ndimage.label``::

    python benchmarks/bench_labelling.py --size 4096 --repeats 9
    python benchmarks/bench_labelling.py --size 2048 --repeats 3 --noise 0.3
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable

import numpy as np
from scipy import ndimage

import temseg.segment
from temseg.bench.stats import median_ms
from temseg.segment import binarize, measure_particles
from temseg.synth import frame_seed, simulate_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="frame side, pixels")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--noise", type=float, default=None, help="random pixels, 0-1")
    parser.add_argument("--smooth", action="store_true", help="majority filter on the noise")
    args = parser.parse_args()
    if args.noise is None:
        particles = max(1, round(3 * (args.size / 512) ** 2))
        synthetic = simulate_frame("Au", args.size, frame_seed(0, "Au", 0), n_particles=particles)
        mask = binarize(synthetic.mask.astype(np.float32), 0.5)
    else:
        noise = np.random.default_rng(0).random((args.size, args.size)) < args.noise
        if args.smooth:
            noise = ndimage.uniform_filter(noise.astype(np.float32), 3) > 0.5
        mask = noise.view(np.uint8)
    binary = mask.view(bool)
    found, _ = measure_particles(binary)
    runs = temseg.segment._runs(binary)[0].size
    chosen = "run by run" if runs <= binary.size * temseg.segment.RUNS_MAX_PER_PIXEL else "scipy"

    def scipy_labelling() -> object:
        threshold = temseg.segment.RUNS_MAX_PER_PIXEL
        temseg.segment.RUNS_MAX_PER_PIXEL = 0.0
        try:
            return measure_particles(binary)
        finally:
            temseg.segment.RUNS_MAX_PER_PIXEL = threshold

    steps: list[tuple[str, Callable[[], object]]] = [
        (f"temseg measure_particles (chooses: {chosen})", lambda: measure_particles(binary)),
        ("temseg measure_particles, scipy.ndimage.label", scipy_labelling),
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
        print("OpenCV not installed: not timed")
    if importlib.util.find_spec("cc3d"):
        import cc3d

        def cc3d_with_stats() -> object:
            labels, n = cc3d.connected_components(mask, connectivity=8, return_N=True)
            return n, cc3d.statistics(labels)

        n = cc3d_with_stats()[0]
        assert n == len(found), f"cc3d found {n} components, temseg {len(found)}"
        steps.append(("cc3d connected_components + statistics", cc3d_with_stats))
    else:
        print("cc3d (connected-components-3d, LGPL) not installed: not timed")
    steps += _gpu_steps(mask, len(found))
    print(
        f"{args.size} x {args.size} px mask, {len(found)} particles, {runs / binary.size:.4f} "
        f"runs per pixel, median of {args.repeats}"
    )
    for name, step in steps:
        print(f"  {name:<58} {median_ms(step, args.repeats):6.1f} ms")


def _gpu_steps(mask: np.ndarray, expected: int) -> list[tuple[str, Callable[[], object]]]:
    """cupyx's labelling of the mask already on the GPU, when CuPy and a CUDA device are here."""
    if not importlib.util.find_spec("cupy"):
        print("CuPy not installed: GPU labelling not timed")
        return []
    import cupy
    from cupyx.scipy import ndimage as gpu_ndimage

    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        devices = 0
    if not devices:
        print("no CUDA device: GPU labelling not timed")
        return []
    on_gpu = cupy.asarray(mask)
    structure = cupy.ones((3, 3), dtype=bool)

    def labels_and_areas() -> object:
        labels, n = gpu_ndimage.label(on_gpu, structure=structure)
        return n, cupy.bincount(labels.ravel()).get()  # the areas back on the host

    n = labels_and_areas()[0]
    assert n == expected, f"cupyx found {n} components, temseg {expected}"
    return [("cupyx.scipy.ndimage.label + areas (mask on the GPU)", labels_and_areas)]


if __name__ == "__main__":
    main()
