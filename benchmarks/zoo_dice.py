"""Dice of model bundles on simulated held-out frames and on real labelled frames.

Simulated: ``--sim-count`` frames per material of ``--size`` px from
``temseg.synth`` with the bundled model's held-out seed (10000), each run at
its own pixel size (0.05 nm/px; resampled to a bundle's pixel size where the
bundle has one). Real: the last ``--last`` frames (sorted by name) of
``--real`` with their ``NAME_mask.tif`` (no pixel size: run on their own
grid). Dice is pixel-wise over all frames of a set together, at each
bundle's default threshold. ``bundled`` names the bundled model.

    python benchmarks/zoo_dice.py bundled /tmp/zoo/AuDots ... \\
        --real ../shared/data/real-tem/au-tetrahedra --json dice.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from temseg.engine import load_engine
from temseg.frames.read import read_frame
from temseg.inference import predict_probability
from temseg.model.bundle import load_bundle
from temseg.synth import frame_seed, simulate_frame


def dice(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    tp = fp = fn = 0
    for predicted, truth in pairs:
        tp += int(np.sum(predicted & truth))
        fp += int(np.sum(predicted & ~truth))
        fn += int(np.sum(~predicted & truth))
    return 2 * tp / max(2 * tp + fp + fn, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", help="bundle folders, or 'bundled'")
    parser.add_argument("--materials", nargs="+", default=["Au", "CdSe"])
    parser.add_argument("--sim-count", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=10000)
    parser.add_argument("--real", type=Path, default=Path("../shared/data/real-tem/au-tetrahedra"))
    parser.add_argument("--last", type=int, default=6)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    start = time.perf_counter()
    simulated = {
        m: [
            simulate_frame(m, args.size, frame_seed(args.seed, m, i)) for i in range(args.sim_count)
        ]
        for m in args.materials
    }
    print(f"simulated {args.sim_count} x {args.materials} in {time.perf_counter() - start:.0f} s")
    names = sorted(p for p in args.real.glob("*.tif") if not p.stem.endswith("_mask"))
    real = [
        (read_frame(p).image, read_frame(p.with_name(p.stem + "_mask.tif")).image > 0)
        for p in names[-args.last :]
    ]

    rows = []
    for spec in args.bundles:
        bundle = load_bundle(None if spec == "bundled" else spec)
        engine = load_engine(bundle, backend=args.backend, device="cpu", threads=2)
        threshold = bundle.threshold_for(None)
        row: dict[str, object] = {
            "model": bundle.metadata.get("name", spec),
            "model_id": bundle.model_id,
            "normalisation": bundle.normalisation,
            "pixel_nm": bundle.pixel_nm,
        }
        for material, frames in simulated.items():
            pairs = [
                (
                    predict_probability(f.image, engine, bundle, pixel_nm=f.metadata["pixel_nm"])
                    >= threshold,
                    f.mask.astype(bool),
                )
                for f in frames
            ]
            row[f"sim_{material}"] = dice(pairs)
        if real:
            pairs = [(predict_probability(im, engine, bundle) >= threshold, m) for im, m in real]
            row["real"] = dice(pairs)
        engine.close()
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
