"""Train the bundled default model on simulated frames and score it on held-out ones.

Simulates ``--frames`` frames per material with ``temseg.synth`` (seed
``--seed``) into ``--workdir``, trains with ``temseg.trainer`` for
``--epochs`` on ``--device``, then simulates ``--test-frames`` more frames
per material with a different seed, segments them at the bundle's default
threshold (0.5) and prints pixel-wise Dice, precision and recall per
material. The held-out scores are also written into the bundle's
``model.json`` under ``heldout`` (the weights, and so the model id, are
unchanged).

Example (GPU)::

    python benchmarks/train_default.py --out src/temseg/model/default \\
        --frames 400 --epochs 60 --device cuda --workers 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import tifffile

from temseg.engine import load_engine
from temseg.inference import predict_probability
from temseg.model.bundle import METADATA_NAME, load_bundle
from temseg.segment import binarize, confusion
from temseg.synth import frame_name, frame_seed, simulate_frame
from temseg.synth.lowmag import simulate_wide_frame
from temseg.trainer.loop import EpochStats, TrainConfig, train


def _write_one(job: tuple[Path, str, int, int, int, str]) -> None:
    folder, material, index, size, seed, distribution = job
    name = frame_name(material, index)
    if (folder / f"{name}.json").is_file():
        return
    simulate = simulate_wide_frame if distribution == "wide" else simulate_frame
    frame = simulate(material, size, frame_seed(seed, material, index))
    tifffile.imwrite(folder / f"{name}.tif", frame.image)
    tifffile.imwrite(folder / f"{name}_mask.tif", frame.mask)
    (folder / f"{name}.json").write_text(json.dumps(frame.metadata, default=str))


def simulate_folder(
    folder: Path,
    materials: list[str],
    count: int,
    size: int,
    seed: int,
    jobs: int,
    distribution: str = "default",
) -> None:
    """``count`` frames per material as NAME.tif + NAME_mask.tif + NAME.json (kept if present).

    ``distribution`` "default" is :func:`simulate_frame`'s, "wide"
    :func:`simulate_wide_frame`'s (no pixel size recorded: used as they come).
    """
    folder.mkdir(parents=True, exist_ok=True)
    work = [(folder, m, i, size, seed, distribution) for m in materials for i in range(count)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(_write_one, work, chunksize=8))


def heldout_scores(
    bundle_dir: Path, materials: list[str], count: int, size: int, seed: int, device: str
) -> dict[str, dict[str, float]]:
    """Pixel-wise Dice/precision/recall per material at the default threshold."""
    bundle = load_bundle(bundle_dir)
    engine = load_engine(bundle, backend="torch", device=device)
    threshold = bundle.threshold_for(None)
    scores = {}
    for material in materials:
        tp = fp = fn = 0
        for i in range(count):
            frame = simulate_frame(material, size, frame_seed(seed, material, i))
            prob = predict_probability(
                frame.image, engine, bundle, pixel_nm=frame.metadata["pixel_nm"]
            )
            a, b, c = confusion(binarize(prob, threshold), frame.mask)
            tp, fp, fn = tp + a, fp + b, fn + c
        scores[material] = {
            "dice": 2 * tp / max(2 * tp + fp + fn, 1),
            "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1),
            "n_frames": count,
            "seed": seed,
            "size": size,
        }
    engine.close()
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--materials", default="Au,CdSe")
    parser.add_argument("--frames", type=int, default=200, help="training frames per material")
    parser.add_argument(
        "--wide-frames",
        type=int,
        default=0,
        help="more training frames per material from the wide distribution (low magnification, "
        "0.02-0.2 nm/px HRTEM, uneven illumination, inverted contrast)",
    )
    parser.add_argument(
        "--freeze-bn", action="store_true", help="keep the --init model's batch-norm statistics"
    )
    parser.add_argument("--size", type=int, default=512, help="frame size (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-frames", type=int, default=20, help="held-out frames per material")
    parser.add_argument("--test-seed", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--preset", default="groschner2021")
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--init", type=Path, default=None, help="bundle to continue from")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--max-minutes", type=float, default=None, help="training time budget")
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "temseg-train"
    )
    args = parser.parse_args(argv)
    materials = [m.strip() for m in args.materials.split(",") if m.strip()]

    start = time.perf_counter()
    data = args.workdir / f"train-{args.size}-s{args.seed}"
    simulate_folder(data, materials, args.frames, args.size, args.seed, os.cpu_count() or 1)
    print(f"simulated {args.frames} x {materials} in {time.perf_counter() - start:.0f} s -> {data}")
    folders = [data]
    if args.wide_frames:
        wide = args.workdir / f"wide-{args.size}-s{args.seed}"
        jobs = os.cpu_count() or 1
        simulate_folder(wide, materials, args.wide_frames, args.size, args.seed, jobs, "wide")
        print(f"simulated {args.wide_frames} wide x {materials} -> {wide}")
        folders.append(wide)

    def progress(s: EpochStats) -> None:
        print(
            f"epoch {s.epoch}/{args.epochs}  loss {s.train_loss:.4f}  val loss {s.val_loss:.4f}  "
            f"val Dice {s.val_dice:.3f}  {s.seconds:.0f} s",
            flush=True,
        )

    config = TrainConfig(
        data=folders,
        out=args.out,
        preset=args.preset,
        epochs=args.epochs,
        patch=args.patch,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        init=args.init,
        workers=args.workers,
        patience=args.patience,
        steps_per_epoch=args.steps_per_epoch,
        max_minutes=args.max_minutes,
        freeze_batch_norm=args.freeze_bn,
        name="temseg-default",
        on_epoch=progress,
    )
    result = train(config)
    print(f"trained {result.model_id} in {result.seconds:.0f} s ({len(result.history)} epochs)")

    device = "cuda" if args.device in ("auto", "cuda") and _cuda() else "cpu"
    scores = heldout_scores(
        args.out, materials, args.test_frames, args.size, args.test_seed, device
    )
    meta_path = args.out / METADATA_NAME
    meta = json.loads(meta_path.read_text())
    meta["heldout"] = scores
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    load_bundle(args.out)  # still a valid bundle

    print(f"\nheld-out simulated frames ({args.size} px, seed {args.test_seed}, threshold 0.5)")
    print(f"{'material':10} {'frames':>6} {'Dice':>6} {'precision':>9} {'recall':>6}")
    for material, s in scores.items():
        print(
            f"{material:10} {s['n_frames']:>6} {s['dice']:>6.3f} {s['precision']:>9.3f} "
            f"{s['recall']:>6.3f}"
        )
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
