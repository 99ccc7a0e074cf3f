"""Figure 2 of Groschner, Choi & Scott (2021) on simulated frames: per-material calibration.

Simulates ``--frames`` held-out frames per material (run ``--seed``,
disjoint from the bundled model's training run 0 and its held-out run
10000) into a temporary folder, runs :func:`temseg.calibrate.run.calibrate`
on them with the model (the bundled default unless ``--model``), writes
``calibration_<material>.png`` (precision, recall and F1 versus threshold,
chosen threshold marked) into ``--out`` at ``--dpi`` and prints a Markdown
table of the chosen thresholds with precision, recall and F1 there and at
the default threshold 0.5.

Example::

    python benchmarks/paper_figure2.py --frames 20 --size 512 --out docs/img
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import tifffile

from temseg.calibrate.run import calibrate
from temseg.synth import frame_name, frame_seed, simulate_frame

DEFAULT_INDEX = 50  # threshold 0.5 on calibrate's 101-point grid
SHOWN = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # thresholds of the curve table


def write_frames(folder: Path, material: str, count: int, size: int, run: int) -> None:
    """Frames 0..count-1 of ``material`` in run ``run`` as NAME.tif + NAME_mask.tif + NAME.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        frame = simulate_frame(material, size, frame_seed(run, material, i))
        name = frame_name(material, i)
        tifffile.imwrite(folder / f"{name}.tif", frame.image)
        tifffile.imwrite(folder / f"{name}_mask.tif", frame.mask)
        (folder / f"{name}.json").write_text(json.dumps(frame.metadata, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--materials", default="Au,CdSe")
    parser.add_argument("--frames", type=int, default=20, help="held-out frames per material")
    parser.add_argument("--size", type=int, default=512, help="frame size (pixels)")
    parser.add_argument("--seed", type=int, default=40_000, help="simulation run of the frames")
    parser.add_argument("--model", default=None, help="bundle folder (default: bundled model)")
    parser.add_argument("--criterion", default="f1")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the PNGs")
    parser.add_argument("--dpi", type=int, default=80, help="PNG resolution (dots per inch)")
    args = parser.parse_args(argv)
    materials = [m.strip() for m in args.materials.split(",") if m.strip()]

    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="temseg-figure2-") as tmp:
        for material in materials:
            write_frames(Path(tmp), material, args.frames, args.size, args.seed)
        with matplotlib.rc_context({"savefig.dpi": args.dpi}):
            for material in materials:
                result = calibrate(
                    material,
                    [tmp],
                    model=args.model,
                    out=args.out,
                    criterion=args.criterion,
                    backend=args.backend,
                    on_warning=lambda text: print(f"warning: {text}", file=sys.stderr),
                )
                rows.append((material, result))
    seconds = time.perf_counter() - start

    model_id = rows[0][1].model_id if rows else ""
    print(
        f"model {model_id}; {args.frames} frames per material, {args.size} px, "
        f"run {args.seed}; criterion {args.criterion}; {seconds:.0f} s\n"
    )
    print(
        "| material | frames | chosen threshold | precision | recall | F1 | "
        "precision @0.5 | recall @0.5 | F1 @0.5 | plot |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for material, r in rows:
        c, k = r.choice, DEFAULT_INDEX
        size_kb = r.plot_path.stat().st_size / 1024
        print(
            f"| {material} | {r.curves.n_images} | {c.threshold:.2f} | {c.precision:.3f} | "
            f"{c.recall:.3f} | {c.f1:.4f} | {r.curves.precision[k]:.3f} | "
            f"{r.curves.recall[k]:.3f} | {r.curves.f1[k]:.4f} | "
            f"{r.plot_path.name} ({size_kb:.0f} KB) |"
        )
    print("\nPrecision / recall / F1 versus threshold:\n")
    print("| threshold | " + " | ".join(m for m, _ in rows) + " |")
    print("|---:|" + "---|" * len(rows))
    for t in SHOWN:
        cells = []
        for _, r in rows:
            k = round(t * (r.curves.thresholds.size - 1))
            p, rc, f = r.curves.precision[k], r.curves.recall[k], r.curves.f1[k]
            cells.append(f"{p:.3f} / {rc:.3f} / {f:.4f}")
        print(f"| {t:.2f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
