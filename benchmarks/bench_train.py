"""Seconds per training epoch: N simulated 512x512 frames, the paper's U-Net.

    python benchmarks/bench_train.py --frames 200 --epochs 2 --device cpu

Frames (half Au, half CdSe) are simulated into a temporary folder first; the
figure printed is the wall time of each epoch (training steps over all
training frames plus validation), from the trainer's own epoch statistics.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from temseg.frames.write import write_frame_tiff, write_mask_tiff, write_sidecar
from temseg.synth import frame_name, frame_seed, simulate_frame
from temseg.trainer.loop import TrainConfig, resolve_device, train


def simulate(folder: Path, count: int, size: int, seed: int) -> None:
    for i in range(count):
        material = ("Au", "CdSe")[i % 2]
        frame = simulate_frame(material, size, frame_seed(seed, material, i))
        name = folder / f"{frame_name(material, i)}.tif"
        write_frame_tiff(name, frame.image, pixel_nm=frame.metadata["pixel_nm"], metadata={})
        write_mask_tiff(folder / f"{name.stem}_mask.tif", frame.mask)
        write_sidecar(name, frame.metadata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="frame and patch size (px)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="temseg-bench-train-") as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "model"
        data.mkdir()
        start = time.perf_counter()
        simulate(data, args.frames, args.size, args.seed)
        simulated_s = time.perf_counter() - start
        result = train(
            TrainConfig(
                data=[data],
                out=out,
                epochs=args.epochs,
                patch=args.size,
                batch=args.batch,
                val_fraction=0.05,
                device=args.device,
                seed=args.seed,
                patience=0,
            )
        )
    device = str(resolve_device(args.device))
    where = (
        torch.cuda.get_device_name() if device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    )
    print(f"simulated {args.frames} frames of {args.size} px in {simulated_s:.1f} s")
    print("| device | frames | patch px | batch | epoch | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for stats in result.history:
        print(
            f"| {where}, torch {torch.__version__} | {args.frames} | {args.size} | {args.batch} "
            f"| {stats.epoch} | {stats.seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
