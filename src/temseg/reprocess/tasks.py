"""What runs on the Dask workers: hash frame files, segment a frame with a model.

Plain functions of picklable arguments returning picklable results; a worker
loads each model once (the first frame it gets) and keeps it until it stops.
Workers read the frame files themselves, so every worker must see them under
the same paths as the client (a shared file system on a cluster).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temseg.frames.find import MATERIAL_RULE, resolve_material, valid_material
from temseg.frames.read import FrameError, read_frames
from temseg.inference import GPU_TILE
from temseg.segment import Particle

_lock = threading.Lock()
# (worker address, spec) -> (bundle, engine); the address keeps in-process workers apart.
_models: dict[tuple[str, ModelSpec], tuple[Any, Any]] = {}
_loads: dict[str, int] = {}


@dataclass(frozen=True)
class ModelSpec:
    """Which model a worker loads and how: ``path`` is the bundle folder
    (``None``: the bundled model), ``model_id`` what its weights must hash to;
    ``threads`` CPU threads of the engine (0 = all cores); ``tile`` and
    ``tile_overlap`` in pixels (``tile`` 0: from the worker's device, as in the
    daemon)."""

    model_id: str
    path: str | None
    backend: str = "auto"
    device: str = "auto"
    threads: int = 1
    tile: int = 0
    tile_overlap: int = 64


@dataclass(frozen=True)
class Rules:
    """How a frame gets its material and threshold: folder rules (globs relative to
    the root a frame was found under) and ``default_material`` as in the daemon;
    ``thresholds`` the model's latest calibration per material (else the bundle's)."""

    folder_rules: dict[str, str] = field(default_factory=dict)
    default_material: str = "Au"
    thresholds: dict[str, float] = field(default_factory=dict)
    min_particle_nm: float = 0.0  # as the daemon's setting


@dataclass(frozen=True)
class Hashed:
    """A frame file's content hash and size (bytes), or why it could not be read."""

    path: str
    sha256: str | None
    size_bytes: int
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    """A frame's result: ``status`` "done" or "failed" (``error`` says why), or
    ``unreadable`` when the file could not be read at all (not recorded: a rerun
    tries again). ``sha256`` and ``size_bytes`` are of the whole file's bytes;
    frame ``frame_index`` of the file's ``n_frames`` (a file that fails whole is
    one outcome for frame 0); sizes in pixels, ``pixel_nm`` and ``pixel_nm_yx``
    in nm per pixel, ``elapsed_ms`` the worker's time for the frame (read to
    particles)."""

    path: str
    sha256: str | None
    size_bytes: int
    status: str
    material: str | None = None
    error: str | None = None
    threshold: float | None = None
    n_particles: int | None = None
    area_fraction: float | None = None
    height: int | None = None
    width: int | None = None
    pixel_nm: float | None = None
    pixel_nm_yx: tuple[float, float] | None = None
    frame_index: int = 0
    n_frames: int = 1
    elapsed_ms: float = 0.0
    backend: str | None = None
    particles: tuple[Particle, ...] = ()
    unreadable: bool = False


def hash_files(paths: list[str]) -> list[Hashed]:
    """SHA-256 and size of each file (a read error is reported, not raised)."""
    hashed = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            hashed.append(Hashed(path, None, 0, f"{path}: cannot read ({exc.strerror or exc})"))
            continue
        hashed.append(Hashed(path, hashlib.sha256(data).hexdigest(), len(data)))
    return hashed


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):  # called outside a Dask worker
        return "local"


def worker_model(spec: ModelSpec) -> tuple[Any, Any]:
    """(bundle, engine) of ``spec`` on this worker, loaded on first use."""
    from temseg.engine import load_engine
    from temseg.model.bundle import BundleError, load_bundle

    address = _worker_address()
    key = (address, spec)
    with _lock:
        found = _models.get(key)
        if found is not None:
            return found
        bundle = load_bundle(spec.path)
        if bundle.model_id != spec.model_id:
            where = spec.path or "the bundled model"
            raise BundleError(
                f"{where}: model_id {bundle.model_id} on this worker, {spec.model_id} expected "
                "(a different bundle under the same path?)"
            )
        engine = load_engine(
            bundle,
            backend=spec.backend,
            device=spec.device,
            threads=spec.threads,
            max_size=max(spec.tile or GPU_TILE, 64),
            batch=1,
        )
        _models[key] = (bundle, engine)
        _loads[address] = _loads.get(address, 0) + 1
        return bundle, engine


def model_loads() -> dict[str, int]:
    """How many models each worker of this process loaded so far (for ``Client.run``)."""
    with _lock:
        return dict(_loads)


def release_models() -> None:
    """Close every engine loaded in this process (in-process workers, after a run)."""
    with _lock:
        for _, engine in _models.values():
            engine.close()
        _models.clear()
        _loads.clear()


def segment_file(path: str, relative: str, spec: ModelSpec, rules: Rules) -> list[Outcome]:
    """Read, segment and measure every 2-D frame of one file with the model of ``spec``.

    The material comes from each frame's metadata, else ``rules`` (the daemon's
    order); a file that cannot be decoded is one "failed" outcome; a file that
    cannot be read at all is one ``unreadable`` outcome.
    """
    from temseg.inference import default_tile, segment_frame

    started = time.perf_counter()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        error = f"{path}: cannot read ({exc.strerror or exc})"
        return [Outcome(path, None, 0, "failed", error=error, unreadable=True)]
    sha256, size = hashlib.sha256(data).hexdigest(), len(data)

    def failed(error: str, material: str | None, index: int = 0, n: int = 1) -> Outcome:
        elapsed = (time.perf_counter() - started) * 1e3
        return Outcome(
            path, sha256, size, "failed", material, error,
            frame_index=index, n_frames=n, elapsed_ms=elapsed,
        )  # fmt: skip

    default_material, _ = resolve_material(
        None, relative, rules.folder_rules, rules.default_material
    )
    try:
        frames = read_frames(path, data=data)  # the bytes that were hashed
    except FrameError as exc:
        return [failed(str(exc), default_material)]
    bundle, engine = worker_model(spec)
    tile = spec.tile or default_tile(engine.device)
    outcomes = []
    for frame in frames:
        index, n = frame.frame_index, frame.n_frames
        if frame.material and not valid_material(frame.material):
            error = (
                f"{path}: material {frame.material[:80]!r} in the frame's metadata "
                f"is not a valid name ({MATERIAL_RULE})"
            )
            outcomes.append(failed(error, default_material, index, n))
            continue
        material, _ = resolve_material(
            frame.material, relative, rules.folder_rules, rules.default_material
        )
        threshold = rules.thresholds.get(material)
        if threshold is None:
            threshold = bundle.threshold_for(material)
        try:
            result = segment_frame(
                frame,
                engine,
                bundle,
                threshold=threshold,
                min_diameter_nm=rules.min_particle_nm,
                tile=tile,
                overlap=spec.tile_overlap,
                material=material,
            )
        except ValueError as exc:  # e.g. a frame too small for the model
            outcomes.append(failed(f"{path}: cannot segment ({exc})", material, index, n))
            continue
        seg = result.segmentation
        height, width = seg.mask.shape
        outcomes.append(
            Outcome(
                path=path,
                sha256=sha256,
                size_bytes=size,
                status="done",
                material=material,
                threshold=float(threshold),
                n_particles=seg.n_particles,
                area_fraction=float(seg.area_fraction),
                height=int(height),
                width=int(width),
                pixel_nm=result.pixel_nm,
                pixel_nm_yx=frame.pixel_nm_yx,
                frame_index=index,
                n_frames=n,
                elapsed_ms=(time.perf_counter() - started) * 1e3,
                backend=engine.name,
                particles=tuple(seg.particles),
            )
        )
        started = time.perf_counter()
    return outcomes
