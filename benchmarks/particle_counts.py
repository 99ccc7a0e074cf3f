"""Particles counted by the bundled model on simulated frames, by smallest diameter counted.

The simulator's frames (as ``temseg demo`` writes them: Au and CdSe in
turn, seeds 0, 1, ...) are segmented at the bundle's threshold and their
components counted against the simulated particles, for each value of
``min_particle_nm``::

    python benchmarks/particle_counts.py --frames 40 --size 256
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from temseg.engine import load_engine
from temseg.inference import predict_probability
from temseg.model.bundle import load_bundle
from temseg.segment import segment_probability
from temseg.synth import simulate_frame

DIAMETERS_NM = (0.0, 0.3, 0.5, 0.8, 1.0, 1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=256, help="frame side, pixels")
    args = parser.parse_args()
    bundle = load_bundle(None)
    engine = load_engine(bundle, "onnxruntime", "cpu")
    frames = []
    for i in range(args.frames):
        material = "Au" if i % 2 == 0 else "CdSe"
        synthetic = simulate_frame(material, args.size, seed=i)
        pixel_nm = float(synthetic.metadata["pixel_nm"])
        probability = predict_probability(synthetic.image, engine, bundle, pixel_nm=pixel_nm)
        _, simulated = ndimage.label(synthetic.mask > 0, structure=np.ones((3, 3)))
        frames.append((probability, pixel_nm, simulated, bundle.threshold_for(material)))
    simulated = sum(f[2] for f in frames)
    print(f"{args.frames} frames of {args.size} px, {simulated} simulated particles")
    print("| min_particle_nm | particles counted | mean abs. error per frame |")
    print("|---:|---:|---:|")
    for diameter in DIAMETERS_NM:
        counts = [
            segment_probability(p, t, px, min_diameter_nm=diameter).n_particles
            for p, px, _, t in frames
        ]
        error = np.mean([abs(c - f[2]) for c, f in zip(counts, frames, strict=True)])
        print(f"| {diameter:g} | {sum(counts)} | {error:.2f} |")


if __name__ == "__main__":
    main()
