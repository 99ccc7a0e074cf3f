"""TensorRT backend (TensorRT 10.x and 11.x), built from the ONNX export and cached on disk.

Precision: TensorRT 11 networks are always strongly typed, so fp16 comes
from an fp16 ONNX export; on TensorRT 10 an fp32 ONNX is built with
``BuilderFlag.FP16``. One optimisation profile covers batches of 1 to
``batch`` frames and sides from 16 to ``max_size`` pixels (rounded up to a
multiple of 16); kernels are tuned for one frame of ``opt_size`` pixels (by
default ``max_size``: the camera's whole frames, where speed matters most).

Engine cache: ``<cache_dir>/<key>.plan`` where ``key`` is a SHA-256 over the
ONNX file's SHA-256, the TensorRT version, the GPU name, its compute
capability, the profile shapes and the precision. A plan that no longer
deserialises (other TensorRT or driver build) is rebuilt. Build timing
caches are kept next to the plans.

The pure parts (:func:`profile_shapes`, :func:`build_setup`,
:func:`engine_cache_key`, :func:`load_or_build`, :func:`check_in_profile`)
need neither TensorRT nor a GPU; everything else imports TensorRT lazily and
raises :class:`EngineError` with an install hint when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from temseg.engine.base import EngineError, as_batch, resolve_device
from temseg.engine.cache import ensure_onnx, file_sha256, resolve_cache_dir
from temseg.model.bundle import ModelBundle
from temseg.model.onnx_export import INPUT_NAME, OUTPUT_NAME
from temseg.options import Precision

log = logging.getLogger(__name__)

TENSORRT_MISSING = (
    "TensorRT is not installed: pip install 'temseg[tensorrt]' (needs an NVIDIA GPU, "
    "driver and CUDA 12), or choose another backend: --backend torch or onnxruntime"
)
PRECISIONS = ("fp16", "fp32")
PROFILE_MULTIPLE = 16  # pixels; profile sides are multiples of this
DEFAULT_MAX_SIZE = 4096  # pixels
DEFAULT_BATCH = 4  # frames
WORKSPACE_BYTES = 2 << 30

T = TypeVar("T")
Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class ProfileShapes:
    """Minimum, optimum and maximum (N, 1, H, W) input shapes of an optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape

    def covers(self, shape: tuple[int, ...]) -> bool:
        """True when every dimension of ``shape`` lies within [min, max]."""
        return len(shape) == 4 and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True)
        )


@dataclass(frozen=True)
class BuildSetup:
    """Version-dependent build choices for one precision."""

    trt_major: int
    precision: str
    onnx_fp16: bool  # export the ONNX graph in fp16 (strongly typed networks)
    builder_fp16_flag: bool  # set BuilderFlag.FP16 (TensorRT 10 weak typing)
    explicit_batch_flag: bool  # pass NetworkDefinitionCreationFlag.EXPLICIT_BATCH (10.x)


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


def profile_shapes(
    max_size: int,
    batch: int = 1,
    *,
    multiple: int = PROFILE_MULTIPLE,
    opt_size: int | None = None,
) -> ProfileShapes:
    """Profile for frames up to ``max_size`` pixels per side and up to ``batch`` frames.

    All sides are multiples of ``multiple``: min is one ``multiple``-pixel
    square frame, opt one frame of ``opt_size`` (default and cap: the maximum), max
    ``batch`` frames of ``max_size`` rounded up.
    """
    opt_size = max_size if opt_size is None else opt_size
    if max_size < 1 or batch < 1 or multiple < 1 or opt_size < 1:
        raise EngineError(
            f"profile needs max_size, batch, multiple and opt_size >= 1, got "
            f"{max_size}, {batch}, {multiple}, {opt_size}"
        )
    side_max = round_up(max_size, multiple)
    side_opt = min(round_up(opt_size, multiple), side_max)
    return ProfileShapes(
        min=(1, 1, multiple, multiple),
        opt=(1, 1, side_opt, side_opt),
        max=(batch, 1, side_max, side_max),
    )


def trt_major_version(version: str) -> int:
    """Major version number of a TensorRT version string such as "10.7.0.23"."""
    match = re.match(r"\s*(\d+)", version)
    if match is None:
        raise EngineError(f"cannot read the TensorRT version {version!r}")
    return int(match.group(1))


def build_setup(trt_version: str, precision: str) -> BuildSetup:
    """How to build at ``precision`` ("fp16" or "fp32") with TensorRT ``trt_version``."""
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
    major = trt_major_version(trt_version)
    if major < 10:
        raise EngineError(f"TensorRT {trt_version} is too old; temseg needs TensorRT 10 or newer")
    fp16 = precision == "fp16"
    if major >= 11:
        return BuildSetup(
            major, precision, onnx_fp16=fp16, builder_fp16_flag=False, explicit_batch_flag=False
        )
    return BuildSetup(
        major, precision, onnx_fp16=False, builder_fp16_flag=fp16, explicit_batch_flag=True
    )


def engine_cache_key(
    *,
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    profile: ProfileShapes,
    precision: str,
) -> str:
    """Hex SHA-256 identifying a built engine; any changed component changes the key."""
    payload = {
        "onnx_sha256": onnx_sha256,
        "trt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": list(compute_capability),
        "profile": {k: list(v) for k, v in asdict(profile).items()},
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def timing_cache_name(trt_version: str, gpu_name: str, compute_capability: tuple[int, int]) -> str:
    """File name of the build timing cache for one TensorRT version and GPU."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    major, minor = compute_capability
    return f"timing-trt{trt_version}-{gpu}-sm{major}{minor}.cache"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("xb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_or_build(
    plan: Path, deserialize: Callable[[bytes], T | None], build: Callable[[], bytes]
) -> tuple[T, bool]:
    """Deserialise the cached ``plan`` or build, store and deserialise a new one.

    ``deserialize`` returns None for a plan it cannot use (another TensorRT
    build, another GPU, a truncated file): that plan is rebuilt and replaced.
    Returns the engine and whether it was built now.
    """
    if plan.is_file():
        engine = deserialize(plan.read_bytes())
        if engine is not None:
            return engine, False
        log.warning("%s: cached TensorRT engine cannot be deserialised here; rebuilding", plan)
    data = build()
    write_atomic(plan, data)
    engine = deserialize(data)
    if engine is None:
        raise EngineError(f"{plan}: the TensorRT engine just built cannot be deserialised")
    return engine, True


def check_in_profile(shape: tuple[int, ...], profile: ProfileShapes) -> None:
    """Raise :class:`EngineError` when a batch shape lies outside the engine's profile."""
    if not profile.covers(shape):
        raise EngineError(
            f"batch shape {tuple(shape)} is outside the TensorRT engine's profile "
            f"(min {profile.min}, max {profile.max}); rebuild it with "
            f"`temseg compile --max-size {max(shape[-2:], default=0)} --batch {shape[0]}` "
            "or use tiling"
        )


def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or :class:`EngineError` with the install hint."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise EngineError(f"{TENSORRT_MISSING} ({exc})") from exc
    return tensorrt


def cuda_device(device: str) -> Any:
    """The ``torch.device`` TensorRT runs on, or :class:`EngineError` without CUDA."""
    import torch

    resolved = resolve_device(device)
    if not resolved.startswith("cuda"):
        raise EngineError("TensorRT needs a CUDA device; PyTorch sees none (device 'cpu')")
    return torch.device(resolved)


@dataclass(frozen=True)
class EnginePlan:
    """Everything that identifies one TensorRT engine build."""

    setup: BuildSetup
    onnx_path: Path
    profile: ProfileShapes
    plan_path: Path
    timing_cache_path: Path


def plan_engine(
    trt_version: str,
    bundle: ModelBundle,
    *,
    gpu_name: str,
    compute_capability: tuple[int, int],
    max_size: int = DEFAULT_MAX_SIZE,
    batch: int = DEFAULT_BATCH,
    precision: str = "fp16",
    opt_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> EnginePlan:
    """Export (or reuse) the ONNX file and work out where the engine for it lives."""
    setup = build_setup(trt_version, precision)
    cache = resolve_cache_dir(cache_dir)
    onnx_path = ensure_onnx(bundle, fp16=setup.onnx_fp16, cache_dir=cache)
    multiple = max(PROFILE_MULTIPLE, bundle.config.size_multiple)
    profile = profile_shapes(max_size, batch, multiple=multiple, opt_size=opt_size)
    key = engine_cache_key(
        onnx_sha256=file_sha256(onnx_path),
        trt_version=trt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        profile=profile,
        precision=precision,
    )
    return EnginePlan(
        setup=setup,
        onnx_path=onnx_path,
        profile=profile,
        plan_path=cache / f"{key}.plan",
        timing_cache_path=cache / timing_cache_name(trt_version, gpu_name, compute_capability),
    )


def _build_serialized(trt: ModuleType, logger: Any, plan: EnginePlan) -> bytes:
    builder = trt.Builder(logger)
    flags = 0
    if plan.setup.explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {plan.onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if plan.setup.builder_fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, plan.profile.min, plan.profile.opt, plan.profile.max)
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(f"TensorRT rejected the optimisation profile {plan.profile}")
    cached = plan.timing_cache_path.read_bytes() if plan.timing_cache_path.is_file() else b""
    timing = config.create_timing_cache(cached)
    if not config.set_timing_cache(timing, ignore_mismatch=False):
        log.warning("%s: timing cache does not fit; starting a new one", plan.timing_cache_path)
        timing = config.create_timing_cache(b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
    log.info(
        "building TensorRT engine %s (%s, profile %s); this takes a while",
        plan.plan_path.name,
        plan.setup.precision,
        plan.profile,
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {plan.onnx_path}")
    write_atomic(plan.timing_cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def _load(
    bundle: ModelBundle,
    *,
    device: str,
    max_size: int,
    batch: int,
    precision: str,
    opt_size: int | None,
    cache_dir: str | Path | None,
) -> tuple[ModuleType, Any, Any, EnginePlan, bool, Any]:
    trt = import_tensorrt()
    import torch

    cuda = cuda_device(device)
    plan = plan_engine(
        trt.__version__,
        bundle,
        gpu_name=torch.cuda.get_device_name(cuda),
        compute_capability=torch.cuda.get_device_capability(cuda),
        max_size=max_size,
        batch=batch,
        precision=precision,
        opt_size=opt_size,
        cache_dir=cache_dir,
    )
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    with torch.cuda.device(cuda):
        engine, built = load_or_build(
            plan.plan_path,
            runtime.deserialize_cuda_engine,
            lambda: _build_serialized(trt, logger, plan),
        )
    return trt, runtime, engine, plan, built, cuda


def build_engine(
    bundle: ModelBundle,
    *,
    device: str = "cuda",
    max_size: int = DEFAULT_MAX_SIZE,
    batch: int = DEFAULT_BATCH,
    precision: str = "fp16",
    opt_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Path, bool]:
    """Build the engine ahead of time (or find it in the cache).

    Returns the plan file and whether it was built now (False: cache hit).
    """
    _, _, _, plan, built, _ = _load(
        bundle,
        device=device,
        max_size=max_size,
        batch=batch,
        precision=precision,
        opt_size=opt_size,
        cache_dir=cache_dir,
    )
    return plan.plan_path, built


class TensorRTEngine:
    """Runs a cached (or freshly built) TensorRT engine of the bundle's probability graph.

    Inputs are copied from page-locked host memory on the engine's own CUDA
    stream (a batch already in page-locked memory without a host copy first),
    cast to the engine's input type (fp16 for an fp16 build on TensorRT 11)
    and executed with ``execute_async_v3`` on that stream; the probability
    comes back in a new page-locked array, returned as is.
    """

    backend = "tensorrt"
    compiled = False  # its optimisation profile covers every shape and batch up to its bounds
    batches = True

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        device: str = "cuda",
        max_size: int = DEFAULT_MAX_SIZE,
        batch: int = DEFAULT_BATCH,
        precision: str = "fp16",
        opt_size: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        import torch

        trt, self._runtime, self._engine, plan, _, self._device = _load(
            bundle,
            device=device,
            max_size=max_size,
            batch=batch,
            precision=precision,
            opt_size=opt_size,
            cache_dir=cache_dir,
        )
        self.profile = plan.profile
        self.plan_path = plan.plan_path
        self.name = f"tensorrt-{precision}"
        self.device = str(self._device)
        self.precision: Precision = "fp16" if precision == "fp16" else "fp32"
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        if sorted(names) != sorted([INPUT_NAME, OUTPUT_NAME]):
            raise EngineError(f"{plan.plan_path}: unexpected engine tensors {names}")
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        self._in_dtype = dtypes[self._engine.get_tensor_dtype(INPUT_NAME)]
        self._out_dtype = dtypes[self._engine.get_tensor_dtype(OUTPUT_NAME)]
        with torch.cuda.device(self._device):
            self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"{plan.plan_path}: cannot create a TensorRT execution context")
        self._stream = torch.cuda.Stream(device=self._device)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Particle probability, float32 (N, H, W), for a float32 (N, 1, H, W) batch."""
        import torch

        from temseg.engine.cuda_io import pinned_source

        if self._context is None:
            raise EngineError(f"{self.name}: engine is closed")
        x = as_batch(batch)
        check_in_profile(x.shape, self.profile)
        host_in = pinned_source(x)
        n, _, h, w = x.shape
        host_out = torch.empty((n, h, w), dtype=torch.float32, pin_memory=True)
        with torch.cuda.stream(self._stream):
            device_in = host_in.to(self._device, non_blocking=True).to(self._in_dtype)
            device_out = torch.empty(x.shape, dtype=self._out_dtype, device=self._device)
            if not self._context.set_input_shape(INPUT_NAME, tuple(x.shape)):
                raise EngineError(f"TensorRT rejected input shape {x.shape}")
            self._context.set_tensor_address(INPUT_NAME, device_in.data_ptr())
            self._context.set_tensor_address(OUTPUT_NAME, device_out.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineError(f"TensorRT execution failed for shape {x.shape}")
            host_out.copy_(device_out[:, 0].float(), non_blocking=True)
        self._stream.synchronize()
        return host_out.numpy()

    def warmup(self, shapes: Iterable[Shape]) -> None:
        """Run each (N, 1, H, W) shape once (first-run allocations happen now)."""
        for shape in shapes:
            self.predict(np.zeros(shape, dtype=np.float32))

    def close(self) -> None:
        """Release the execution context and engine."""
        self._context = None
        self._engine = None
