"""Frames per second of the inference engines on square frames of the paper-size U-Net.

CPU (default): PyTorch fp32 vs ONNX Runtime with a fixed thread count::

    python benchmarks/bench_engines.py --threads 2 --sizes 512 2048

CUDA: PyTorch eager fp32, eager fp16 + channels_last, torch.compile'd fp16
(max-autotune without and reduce-overhead with CUDA graphs), and TensorRT fp16
when it is installed::

    python benchmarks/bench_engines.py --device cuda --sizes 512 2048 4096

Each figure is end to end per frame (host array in, host probability out,
batch of one), the median over ``--repeats`` runs after warm-up. Weights are
random (speed does not depend on them) unless ``--model`` names a bundle.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from temseg.engine import EngineError, load_engine, tensorrt_importable, warmup
from temseg.model.bundle import ModelBundle, load_bundle
from temseg.model.unet import build_unet

CPU_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("torch-cpu-fp32", {"backend": "torch"}),
    ("onnxruntime-cpu", {"backend": "onnxruntime"}),
]
CUDA_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("torch eager fp32", {"backend": "torch", "precision": "fp32"}),
    ("torch eager fp16 channels_last", {"backend": "torch", "precision": "fp16"}),
    ("torch compiled fp16", {"backend": "torch", "precision": "fp16", "compile": True}),
    (
        "torch compiled fp16 cudagraphs",
        {
            "backend": "torch",
            "precision": "fp16",
            "compile": True,
            "compile_mode": "reduce-overhead",
        },
    ),
    ("tensorrt fp16", {"backend": "tensorrt", "precision": "fp16"}),
]


def time_engine(engine: object, frame: np.ndarray, repeats: int) -> float:
    """Median seconds per call of ``engine.predict(frame)``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.predict(frame)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="pixels")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0 = all cores)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=None, help="bundle directory (default: random net)")
    parser.add_argument("--cache", default=None, help="engine cache directory")
    parser.add_argument(
        "--skip", nargs="*", default=[], help="engine labels to leave out, e.g. 'tensorrt fp16'"
    )
    args = parser.parse_args()

    if args.model:
        bundle = load_bundle(args.model)
    else:
        torch.manual_seed(0)
        bundle = ModelBundle(model=build_unet("groschner2021").eval(), metadata={})
    configs = CPU_CONFIGS if args.device == "cpu" else CUDA_CONFIGS
    if args.device == "cuda" and not tensorrt_importable():
        configs = [c for c in configs if c[1]["backend"] != "tensorrt"]
    configs = [c for c in configs if c[0] not in args.skip]
    rng = np.random.default_rng(0)
    print(f"device {args.device}, threads {args.threads}, torch {torch.__version__}")
    if args.device == "cuda":
        print(f"GPU {torch.cuda.get_device_name()}")
    print(f"{'engine':34s} {'size':>6s} {'ms/frame':>10s} {'frames/s':>9s} {'setup s':>8s}")
    for label, options in configs:
        start = time.perf_counter()
        try:
            engine = load_engine(
                bundle,
                device=args.device,
                threads=args.threads,
                cache_dir=args.cache,
                max_size=max(args.sizes),
                batch=1,
                **options,
            )
        except EngineError as exc:
            print(f"{label:34s} unavailable: {exc}")
            continue
        print(f"{label:34s} loaded in {time.perf_counter() - start:.1f} s", flush=True)
        for size in args.sizes:
            frame = rng.random((1, 1, size, size), dtype=np.float32)
            start = time.perf_counter()
            warmup(engine, [frame.shape])  # compilation / autotuning / first-run allocations
            setup = time.perf_counter() - start
            seconds = time_engine(engine, frame, args.repeats)
            print(
                f"{label:34s} {size:6d} {1e3 * seconds:10.1f} {1 / seconds:9.2f} {setup:8.1f}",
                flush=True,
            )
        engine.close()


if __name__ == "__main__":
    main()
