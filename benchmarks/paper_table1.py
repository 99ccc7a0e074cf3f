"""Table 1 of Groschner, Choi & Scott (2021) on simulated frames: CdSe only vs CdSe + Au.

Two U-Nets (preset ``groschner2021``, from scratch) are trained per seed
with the same number of labelled frames, epochs, batch, learning rate and
seed: one on ``--n-images`` CdSe frames, one on ``--n-images / 2`` CdSe
frames (the first half of the CdSe-only set) plus ``--n-images / 2`` Au
frames. ``train`` keeps 20 % of each set (stratified by material) for
validation and best-epoch selection; early stopping is off, so both run
every epoch. Both models are then scored pixel-wise on the same held-out
CdSe frames (and, for reference, Au frames): Dice, precision and recall at
threshold 0.5 and at each model's max-F1 threshold, chosen by a sweep on a
separate set of CdSe validation frames. Prints a Markdown table with the
paper's figures alongside.

Frame seeds (``temseg.synth.frame_seed(run, material, index)``): training
run ``100 + seed``, threshold-sweep run 20000, test run 30000, all disjoint
from the bundled model's runs (0 for training, 10000 for its held-out
scores). Training frames are written to a temporary folder, removed at the
end; ``--out`` keeps the trained bundles and ``results.json`` (rewritten
after each seed). ``--report`` prints the tables of saved ``results.json``
files, so seeds run one invocation each are reported together.
``--contrast`` prints how strongly Au and CdSe particles stand out from
the carbon in the test frames (mean level and lattice-fringe texture).

Example (2 CPU cores, 5-12 minutes per seed)::

    for s in 0 1 2; do
        nice -n 10 python benchmarks/paper_table1.py --n-images 64 --epochs 6 \\
            --patch 256 --seeds $s --out /tmp/table1/s$s
    done
    python benchmarks/paper_table1.py --report /tmp/table1/s*/results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from scipy import ndimage

from temseg.calibrate.sweep import Curves, choose_threshold, confusion_curves
from temseg.engine import load_engine
from temseg.inference import predict_probability
from temseg.model.bundle import load_bundle
from temseg.synth import SyntheticFrame, frame_name, frame_seed, simulate_frame
from temseg.trainer.loop import EpochStats, TrainConfig, resolve_device, train

TRAIN_RUN = 100  # training frames of repeat ``seed`` come from run TRAIN_RUN + seed
SWEEP_RUN = 20_000
TEST_RUN = 30_000
PAPER = {  # Groschner, Choi & Scott (2021), Table 1: CdSe test images
    "CdSe only": {"dice": 0.43, "precision": 0.44, "recall": 0.42},
    "CdSe + Au": {"dice": 0.59, "precision": 0.56, "recall": 0.62},
}
ARMS = ("CdSe only", "CdSe + Au")
HALF_GRID = 50  # index of threshold 0.5 on the 101-point grid


def write_frames(folder: Path, material: str, indices: range, size: int, run: int) -> None:
    """Frames ``indices`` of ``material`` in run ``run`` as NAME.tif + NAME_mask.tif + NAME.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        frame = simulate_frame(material, size, frame_seed(run, material, i))
        name = frame_name(material, i)
        tifffile.imwrite(folder / f"{name}.tif", frame.image)
        tifffile.imwrite(folder / f"{name}_mask.tif", frame.mask)
        (folder / f"{name}.json").write_text(json.dumps(frame.metadata, default=str))


def simulate_set(material: str, count: int, size: int, run: int) -> list[SyntheticFrame]:
    """Frames 0..count-1 of ``material`` in run ``run`` (held in memory)."""
    return [simulate_frame(material, size, frame_seed(run, material, i)) for i in range(count)]


def curves_on(bundle_dir: Path, frames: Sequence[SyntheticFrame], device: str) -> Curves:
    """Pixel confusion counts at 101 thresholds of the bundle on ``frames``."""
    bundle = load_bundle(bundle_dir)
    engine = load_engine(bundle, backend="torch", device=device, threads=torch.get_num_threads())
    try:
        probs = (
            predict_probability(f.image, engine, bundle, pixel_nm=f.metadata["pixel_nm"])
            for f in frames
        )
        return confusion_curves(probs, (f.mask for f in frames))
    finally:
        engine.close()


def at(curves: Curves, index: int) -> dict[str, float]:
    """Dice, precision, recall and threshold at grid ``index``."""
    return {
        "threshold": float(curves.thresholds[index]),
        "dice": float(curves.f1[index]),
        "precision": float(curves.precision[index]),
        "recall": float(curves.recall[index]),
    }


def contrast(frames: Sequence[SyntheticFrame]) -> dict[str, float]:
    """How particles stand out, medians over the frames holding >= 500 particle pixels.

    ``mean``: (particle mean - background mean) / background standard
    deviation; ``texture``: mean local standard deviation (15-pixel windows)
    inside particles over that of the background. Images are smoothed by a
    1-pixel Gaussian first; background is every pixel >= 20 pixels from a particle.
    """
    means, textures = [], []
    for f in frames:
        inside = f.mask > 0
        if inside.sum() < 500:
            continue
        x = ndimage.gaussian_filter(f.image.astype(np.float64), 1.0)
        background = ndimage.binary_erosion(~inside, iterations=20)
        means.append((x[inside].mean() - x[background].mean()) / x[background].std())
        local = ndimage.uniform_filter(x**2, 15) - ndimage.uniform_filter(x, 15) ** 2
        local = np.sqrt(np.clip(local, 0.0, None))
        textures.append(local[inside].mean() / local[background].mean())
    return {
        "frames": len(means),
        "mean": float(np.median(means)),
        "texture": float(np.median(textures)),
    }


def train_arm(
    arm: str, seed: int, folders: list[Path], out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Train one model of ``arm`` on ``folders``; training facts for the report."""

    def progress(s: EpochStats) -> None:
        print(
            f"  [{arm}, seed {seed}] epoch {s.epoch}/{args.epochs}  loss {s.train_loss:.3f}  "
            f"val loss {s.val_loss:.3f}  val Dice {s.val_dice:.3f}  {s.seconds:.0f} s",
            flush=True,
        )

    steps = 0

    def count_step(step: int, loss: float, model: torch.nn.Module) -> None:
        nonlocal steps
        steps = step + 1

    result = train(
        TrainConfig(
            data=folders,
            out=out,
            preset="groschner2021",
            epochs=args.epochs,
            patch=args.patch,
            batch=args.batch,
            lr=args.lr,
            seed=seed,
            device=args.device,
            patience=0,
            name=f"table1-{arm.replace(' ', '').replace('+', '-')}-s{seed}",
            on_epoch=progress,
            on_step=count_step,
        )
    )
    meta = json.loads((out / "model.json").read_text())["training"]
    return {
        "n_train": meta["n_train"],
        "n_val": meta["n_val"],
        "steps": steps,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
    }


def run_seed(
    seed: int,
    work: Path,
    out: Path,
    sweep: list[SyntheticFrame],
    test: dict[str, list[SyntheticFrame]],
    args: argparse.Namespace,
    eval_device: str,
) -> dict[str, dict[str, Any]]:
    """Both arms for one seed: training facts and scores."""
    half = args.n_images // 2
    data = work / f"s{seed}"
    run = TRAIN_RUN + seed
    write_frames(data / "CdSe-a", "CdSe", range(half), args.size, run)
    write_frames(data / "CdSe-b", "CdSe", range(half, args.n_images), args.size, run)
    write_frames(data / "Au", "Au", range(half), args.size, run)
    sets = {
        "CdSe only": [data / "CdSe-a", data / "CdSe-b"],
        "CdSe + Au": [data / "CdSe-a", data / "Au"],
    }

    rows = {}
    for arm in ARMS:
        bundle_dir = out / f"{arm.replace(' ', '').replace('+', '-')}-s{seed}"
        facts = train_arm(arm, seed, sets[arm], bundle_dir, args)
        sweep_curves = curves_on(bundle_dir, sweep, eval_device)
        choice = choose_threshold(sweep_curves, "f1")
        cdse = curves_on(bundle_dir, test["CdSe"], eval_device)
        au = curves_on(bundle_dir, test["Au"], eval_device)
        rows[arm] = {
            **facts,
            "seed": seed,
            "cdse_at_0.5": at(cdse, HALF_GRID),
            "cdse_at_best": at(cdse, choice.index),
            "sweep_f1": choice.f1,
            "au_at_0.5": at(au, HALF_GRID),
        }
        r = rows[arm]
        print(
            f"  [{arm}, seed {seed}] CdSe test Dice {r['cdse_at_0.5']['dice']:.3f} at 0.5, "
            f"{r['cdse_at_best']['dice']:.3f} at {choice.threshold:.2f}; "
            f"Au test Dice {r['au_at_0.5']['dice']:.3f}",
            flush=True,
        )
    return rows


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` (sample standard deviation), or the value alone for one repeat."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


SETTINGS = ("n_images", "epochs", "patch", "size", "batch", "lr", "test_frames", "sweep_frames")


def settings_line(settings: dict[str, Any]) -> str:
    """One line describing a run's settings."""
    return (
        f"{settings['n_images']} frames per model ({settings['size']} px), "
        f"{settings['epochs']} epochs, patch {settings['patch']}, batch {settings['batch']}, "
        f"lr {settings['lr']:g}; CdSe test frames: {settings['test_frames']} x "
        f"{settings['size']} px (run {TEST_RUN}), threshold sweep on {settings['sweep_frames']} "
        f"CdSe frames (run {SWEEP_RUN})"
    )


def markdown(results: list[dict[str, dict[str, Any]]], settings: dict[str, Any]) -> str:
    """The comparison table, a per-seed table and the paired Dice differences."""
    lines = [
        settings_line(settings) + f"; {len(results)} seed(s), mean ± sd over seeds.",
        "",
        "| training set | Dice @0.5 | precision @0.5 | recall @0.5 | max-F1 threshold "
        "(sweep) | Dice @it | precision @it | recall @it | Au Dice @0.5 | "
        "paper Dice / P / R |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for arm in ARMS:
        rows = [r[arm] for r in results]

        def col(key: str, metric: str, rows: list[dict[str, Any]] = rows) -> str:
            return mean_sd([r[key][metric] for r in rows])

        p = PAPER[arm]
        lines.append(
            f"| {arm} | {col('cdse_at_0.5', 'dice')} | {col('cdse_at_0.5', 'precision')} | "
            f"{col('cdse_at_0.5', 'recall')} | {col('cdse_at_best', 'threshold')} | "
            f"{col('cdse_at_best', 'dice')} | {col('cdse_at_best', 'precision')} | "
            f"{col('cdse_at_best', 'recall')} | {col('au_at_0.5', 'dice')} | "
            f"{p['dice']:.2f} / {p['precision']:.2f} / {p['recall']:.2f} |"
        )
    lines += [
        "",
        "| seed | training set | train / val frames | steps | best epoch | s | "
        "CdSe Dice @0.5 | P | R | threshold | CdSe Dice @it | Au Dice @0.5 |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for arm in ARMS:
            r = res[arm]
            h, b = r["cdse_at_0.5"], r["cdse_at_best"]
            lines.append(
                f"| {r['seed']} | {arm} | {r['n_train']} / {r['n_val']} | {r['steps']} | "
                f"{r['best_epoch']} | {r['seconds']:.0f} | {h['dice']:.3f} | "
                f"{h['precision']:.3f} | {h['recall']:.3f} | {b['threshold']:.2f} | "
                f"{b['dice']:.3f} | {r['au_at_0.5']['dice']:.3f} |"
            )
    diffs = [
        r["CdSe + Au"]["cdse_at_0.5"]["dice"] - r["CdSe only"]["cdse_at_0.5"]["dice"]
        for r in results
    ]
    diffs_best = [
        r["CdSe + Au"]["cdse_at_best"]["dice"] - r["CdSe only"]["cdse_at_best"]["dice"]
        for r in results
    ]
    lines += [
        "",
        "Paired CdSe Dice difference (CdSe + Au minus CdSe only), per seed: at 0.5 "
        + ", ".join(f"{d:+.3f}" for d in diffs)
        + f" (mean {statistics.mean(diffs):+.3f}); at the swept thresholds "
        + ", ".join(f"{d:+.3f}" for d in diffs_best)
        + f" (mean {statistics.mean(diffs_best):+.3f}).",
    ]
    return "\n".join(lines)


def report(paths: Sequence[Path]) -> str:
    """The tables of saved ``results.json`` files (same settings, e.g. one file per seed)."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    settings = records[0]["settings"]
    for path, record in zip(paths, records, strict=True):
        if record["settings"] != settings:
            raise SystemExit(f"{path}: other settings than {paths[0]}; not merged")
    return markdown([r for record in records for r in record["results"]], settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=64, help="labelled frames per model")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patch", type=int, default=256, help="training patch (pixels)")
    parser.add_argument("--size", type=int, default=512, help="frame size (pixels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seeds", default="0", help="comma-separated repeat seeds")
    parser.add_argument("--test-frames", type=int, default=30, help="held-out frames/material")
    parser.add_argument("--sweep-frames", type=int, default=20, help="CdSe frames for the sweep")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads")
    parser.add_argument(
        "--out", type=Path, default=None, help="keep bundles + results.json (after each seed)"
    )
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="only print the tables of saved results.json files (no training)",
    )
    parser.add_argument(
        "--contrast",
        action="store_true",
        help="only print how particles stand out in the test frames (no training)",
    )
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if args.contrast:
        print(f"test frames: {args.test_frames} x {args.size} px per material (run {TEST_RUN})\n")
        print("| material | frames | (mean in - out) / std out | local std in / out |")
        print("|---|---:|---:|---:|")
        for m in ("Au", "CdSe"):
            c = contrast(simulate_set(m, args.test_frames, args.size, TEST_RUN))
            print(f"| {m} | {c['frames']} | {c['mean']:+.2f} | {c['texture']:.2f} |")
        return 0
    if args.n_images < 4 or args.n_images % 2:
        parser.error("--n-images must be an even number >= 4")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    torch.set_num_threads(args.threads)
    eval_device = resolve_device(args.device).type
    settings = {k: getattr(args, k) for k in SETTINGS}

    start = time.perf_counter()
    sweep = simulate_set("CdSe", args.sweep_frames, args.size, SWEEP_RUN)
    test = {m: simulate_set(m, args.test_frames, args.size, TEST_RUN) for m in ("CdSe", "Au")}
    results = []
    with tempfile.TemporaryDirectory(prefix="temseg-table1-") as tmp:
        out = args.out if args.out is not None else Path(tmp) / "bundles"
        for seed in seeds:
            results.append(run_seed(seed, Path(tmp), out, sweep, test, args, eval_device))
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                record = {"settings": settings, "device": eval_device, "results": results}
                (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    minutes = (time.perf_counter() - start) / 60
    print(f"\ndevice {eval_device}, {args.threads} threads, {minutes:.1f} min in all\n")
    print(markdown(results, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
