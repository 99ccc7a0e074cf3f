"""Time the synthetic HRTEM generator: milliseconds per frame and per stage.

    python benchmarks/bench_synth.py --size 512 --frames 20

For each material prints the median and 90th-percentile time of a whole
``simulate_frame`` call (random conditions, 0-4 particles) over ``--frames``
seeds after one warm-up frame, then a per-stage breakdown of one typical
frame (lattice cutting, binning, potential, lens, camera, mask). Target: a
512 x 512 frame in under 0.2 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from scipy import fft

from temseg.synth import MATERIALS, simulate_frame
from temseg.synth.crystal import make_particle
from temseg.synth.detector import detect
from temseg.synth.frame import CARBON_ATOMS_PER_NM3, project_atoms
from temseg.synth.mask import outline_mask
from temseg.synth.optics import image_intensity, interaction_constant, transfer_function
from temseg.synth.scattering import bin_atoms, projected_potential


def whole_frames(material: str, size: int, frames: int) -> list[float]:
    """Seconds per ``simulate_frame`` call for seeds 0..frames-1 (after a warm-up)."""
    simulate_frame(material, size, seed=10_000)
    times = []
    for seed in range(frames):
        start = time.perf_counter()
        simulate_frame(material, size, seed=seed)
        times.append(time.perf_counter() - start)
    return times


def stages(material: str, size: int, pixel_nm: float = 0.05) -> dict[str, float]:
    """Milliseconds of each stage for two 5 nm particles on 5 nm of carbon."""
    rng = np.random.default_rng(0)
    grid = (fft.next_fast_len(size + 64, True),) * 2
    ms: dict[str, float] = {}

    def lap(name: str, start: float) -> float:
        now = time.perf_counter()
        ms[name] = 1e3 * (now - start)
        return now

    t = time.perf_counter()
    particles = [make_particle(MATERIALS[material], 5.0, rng) for _ in range(2)]
    centres = [(size / 3, size / 3), (2 * size / 3, 2 * size / 3)]
    t = lap("cut lattice (2 particles)", t)
    counts = {}
    n_carbon = rng.poisson(CARBON_ATOMS_PER_NM3 * 5.0 * pixel_nm**2 * grid[0] * grid[1])
    carbon = np.bincount(rng.integers(0, grid[0] * grid[1], n_carbon), minlength=grid[0] * grid[1])
    counts["C"] = carbon.reshape(grid).astype(np.float32)
    for element in MATERIALS[material].elements:
        parts = [
            project_atoms(p.atoms[element], c, pixel_nm)
            for p, c in zip(particles, centres, strict=True)
        ]
        counts[element] = bin_atoms(np.concatenate(parts) + 32, grid)
    t = lap("bin atoms (incl. carbon)", t)
    phase = interaction_constant(300.0) * projected_potential(counts, pixel_nm)
    t = lap("projected potential", t)
    transfer = transfer_function(grid, pixel_nm, 300.0, -56.0, 1.2, 3.0, 0.2)
    intensity = image_intensity(phase, transfer)[32 : 32 + size, 32 : 32 + size]
    t = lap("lens (CTF + 2 FFTs)", t)
    detect(intensity, rng, pixel_nm=pixel_nm, dose_e_per_a2=500.0, blur_px=1.0, read_noise_adu=2)
    t = lap("camera", t)
    for p, c in zip(particles, centres, strict=True):
        outline_mask(
            np.concatenate([project_atoms(a, c, pixel_nm) for a in p.atoms.values()]), (size, size)
        )
    lap("mask", t)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="frame size in pixels")
    parser.add_argument("--frames", type=int, default=20, help="frames per material")
    args = parser.parse_args()
    print(f"simulate_frame, {args.size}x{args.size} px, {os.cpu_count()} CPUs visible")
    for material in MATERIALS:
        times = whole_frames(material, args.size, args.frames)
        p90 = float(np.percentile(times, 90))
        print(
            f"{material:5s} median {1e3 * statistics.median(times):6.1f} ms  "
            f"p90 {1e3 * p90:6.1f} ms  ({args.frames} frames)"
        )
    for material in MATERIALS:
        stages(material, args.size)  # warm caches
        parts = stages(material, args.size)
        print(f"{material} stages: " + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items()))


if __name__ == "__main__":
    main()
