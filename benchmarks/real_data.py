"""Zero-shot, fine-tuned and Otsu Dice on a folder of real labelled frames.

The folder's labelled frames (NAME.tif + NAME_mask.tif), sorted by name,
are split into the first ``--train`` (fine-tuning data) and the last
``--test`` (scored). On the test frames, pixel-wise Dice pooled over the
frames is printed for:

- ``otsu``: a global Otsu threshold per frame, particles on the side of the
  threshold that fits the test masks better over all test frames (one
  polarity for the set, as a user would choose it by eye);
- ``zero-shot``: the model (default: the bundled one) at its threshold;
- ``fine-tuned``: the model after ``temseg train --init MODEL --material M
  --pairs <train frames>`` with the command's defaults, run as a subprocess
  and timed (skipped with ``--no-fine-tune``).

Example::

    nice -n 5 python benchmarks/real_data.py --data ../shared/data/real-tem/au-tetrahedra \\
        --material Au --train 12 --test 6
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from temseg.engine import load_engine
from temseg.inference import predict_probability
from temseg.model.resolve import resolve_bundle
from temseg.segment import confusion
from temseg.trainer.data import LabelledFrame, find_pairs, read_labelled_frame


def otsu_threshold(image: np.ndarray, bins: int = 256) -> float:
    """Global Otsu threshold of ``image`` (the between-class variance maximum)."""
    counts, edges = np.histogram(image.ravel(), bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    sums = np.cumsum(counts * centres)
    mean_below = sums / np.maximum(below, 1)
    mean_above = (sums[-1] - sums) / np.maximum(above, 1)
    return float(centres[np.argmax(below * above * (mean_below - mean_above) ** 2)])


def dice(counts: np.ndarray) -> float:
    tp, fp, fn = counts
    return float(2 * tp / max(2 * tp + fp + fn, 1))


def otsu_counts(frames: list[LabelledFrame]) -> np.ndarray:
    """Summed (tp, fp, fn) of Otsu masks, with the polarity that fits the set better."""
    bright, dark = np.zeros(3), np.zeros(3)
    for f in frames:
        image = f.image.astype(np.float64)
        level = otsu_threshold(image)
        truth = f.mask.astype(bool)
        bright += confusion(image > level, truth)
        dark += confusion(image <= level, truth)
    return bright if dice(bright) >= dice(dark) else dark


def model_counts(model: str | Path, frames: list[LabelledFrame]) -> np.ndarray:
    bundle = resolve_bundle(model, None)
    engine = load_engine(bundle, backend="torch", device="cpu")
    total = np.zeros(3)
    try:
        for f in frames:
            p = predict_probability(f.image, engine, bundle, pixel_nm=f.pixel_nm)
            total += confusion(p >= bundle.threshold_for(f.material), f.mask.astype(bool))
    finally:
        engine.close()
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of labelled frames")
    parser.add_argument("--material", default=None, help="material of frames without metadata")
    parser.add_argument("--train", type=int, default=12, help="first N frames: fine-tuning")
    parser.add_argument("--test", type=int, default=6, help="last M frames: scored")
    parser.add_argument("--model", default="bundled", help="bundled | a bundle folder")
    parser.add_argument("--no-fine-tune", action="store_true")
    parser.add_argument("--train-args", default="", help="extra arguments for temseg train")
    args = parser.parse_args(argv)

    pairs = find_pairs(args.data)
    if args.train + args.test > len(pairs):
        parser.error(f"{args.data} has {len(pairs)} labelled frames, fewer than train + test")
    test = [read_labelled_frame(*p) for p in pairs[len(pairs) - args.test :]]
    rows = [("otsu", dice(otsu_counts(test)), None)]
    rows.append(("zero-shot", dice(model_counts(args.model, test)), None))
    if not args.no_fine_tune:
        with tempfile.TemporaryDirectory() as tmp:
            listing = Path(tmp) / "train.csv"
            listed = "".join(f"{i.resolve()},{m.resolve()}\n" for i, m in pairs[: args.train])
            listing.write_text("image,mask\n" + listed)
            out = Path(tmp) / "model"
            command = [sys.executable, "-m", "temseg", "train", "--pairs", str(listing),
                       "--init", args.model, "--out", str(out), "--quiet"]  # fmt: skip
            if args.material:
                command += ["--material", args.material]
            command += args.train_args.split()
            start = time.perf_counter()
            run = subprocess.run(command, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - start
            print(run.stdout, file=sys.stderr)
            if run.returncode:
                print(run.stderr, file=sys.stderr)
                return 1
            rows.append(("fine-tuned", dice(model_counts(out, test)), seconds))
    print(f"{args.data.name}: train on first {args.train}, score on last {args.test} frames")
    print(f"{'method':12} {'Dice':>6} {'time (s)':>9}")
    for name, value, seconds in rows:
        print(f"{name:12} {value:6.3f} {'' if seconds is None else f'{seconds:9.0f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
