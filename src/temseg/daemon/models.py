"""Which model serves the next frame, and at which threshold.

The model is, in order: the bundle named by ``--model`` (pinned: never
swapped), else the model promoted to active in the database, else the bundle
shipped with temseg. :meth:`ModelServer.refresh` is called by the
inference thread before a batch (when frames arrive after an idle spell,
and at least every few seconds under load); when the database's active
model changed it loads the new bundle and engine, warms them up and swaps
them in. A bundle that fails to load is rejected with an ERROR log and the
current model keeps serving; it is tried again only once the active model
changes again. Thresholds are cached per (model id, material) between
refreshes, so a frame costs no database query for its threshold.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine as Database

from temseg.engine import Engine, load_engine, warmup
from temseg.frames.tiling import engine_shape
from temseg.inference import CPU_TILE
from temseg.model.bundle import METADATA_NAME, ModelBundle, default_model_path, load_bundle
from temseg.store import (
    active_model,
    active_model_id,
    latest_threshold,
    list_models,
    register_model,
)

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "bundled"


@dataclass(frozen=True)
class ServedModel:
    """A loaded bundle with its engine; ``source`` is "pinned", "active" or "bundled"."""

    bundle: ModelBundle
    engine: Engine
    source: str
    registry_id: str | None  # the database model id it was loaded for, if any

    @property
    def model_id(self) -> str:
        return self.bundle.model_id


@dataclass(frozen=True)
class EngineOptions:
    """How engines are created: see :func:`temseg.engine.load_engine`.

    ``tile`` (pixels per side: larger frames are run in tiles overlapping by
    ``tile_overlap`` pixels) and ``batch`` (frames) bound a TensorRT
    profile; ``cache_dir`` holds ONNX exports and TensorRT plans. ``compile``
    asks for ``torch.compile`` on CUDA; ``warmup_shapes`` are frame shapes
    run once at load, so that compilation happens before the first frame.
    """

    backend: str = "auto"
    device: str = "auto"
    threads: int = 0
    cache_dir: Path | None = None
    tile: int = CPU_TILE
    tile_overlap: int = 64
    batch: int = 4
    compile: bool = False
    warmup_shapes: tuple[tuple[int, int], ...] = ()  # frame (height, width), pixels


def register_bundled(db: Database) -> str:
    """Register the bundle shipped with temseg (if not yet) and return its model id.

    It is then listed and can be promoted like any trained model, e.g. back
    after another model was promoted. Its metadata is read without loading
    the weights; ``temseg models promote`` loads them before promoting.
    """
    path = default_model_path()
    metadata = json.loads((path / METADATA_NAME).read_text())
    model_id = str(metadata["model_id"])
    if not any(record.model_id == model_id for record in list_models(db)):
        name = f"{metadata.get('name', 'temseg-default')} (bundled)"
        register_model(db, model_id, name, str(path), metadata)
    return model_id


def frames_per_call(engine: Engine, batch_size: int) -> int:
    """How many frames the daemon passes to ``engine`` in one call.

    Up to ``batch_size`` with an engine that batches (:attr:`Engine.batches
    <temseg.engine.Engine.batches>`: a GPU engine, not compiled); one on CPU,
    where a batch costs more CPU time per frame than single frames and far
    more memory (``benchmarks/RESULTS.md``), and one with a compiled engine,
    which would compile every batch size separately.
    """
    return batch_size if engine.batches else 1


def load_served(
    path: str | None, source: str, registry_id: str | None, options: EngineOptions
) -> ServedModel:
    """Load a bundle (None = the bundled default) and its engine, and warm the engine up."""
    bundle = load_bundle(path)
    engine = load_engine(
        bundle,
        backend=options.backend,
        device=options.device,
        threads=options.threads,
        cache_dir=options.cache_dir,
        max_size=max(options.tile, 64),
        batch=options.batch,
        compile=options.compile,
    )
    try:
        warm_up(
            engine, bundle, options.warmup_shapes, tile=options.tile, overlap=options.tile_overlap
        )
    except BaseException:
        engine.close()
        raise
    return ServedModel(bundle=bundle, engine=engine, source=source, registry_id=registry_id)


def warm_up(
    engine: Engine,
    bundle: ModelBundle,
    frame_shapes: Iterable[tuple[int, int]] = (),
    *,
    tile: int = CPU_TILE,
    overlap: int = 64,
) -> float:
    """Run each of ``frame_shapes`` (pixels) once, or a small frame if none; return ms.

    Frame shapes are taken at the model's own pixel size, padded as the
    daemon pads them and, when larger than ``tile`` pixels, cut into tiles
    overlapping by ``overlap`` pixels as the daemon cuts them: the engine
    sees the very shapes that frames will give it, so engines that compile
    per shape (``torch.compile``) do it now instead of on the first frame;
    frames of other shapes still compile on their first frame. Shapes are
    not bucketed further: padding a frame beyond the model's size multiple
    changes mask pixels near its bottom and right edges, and a camera
    delivers few distinct shapes.
    """
    multiple = bundle.config.size_multiple

    def padded(side: int) -> int:
        return -(-side // multiple) * multiple

    shapes = {
        (1, 1, *engine_shape((padded(h), padded(w)), tile, overlap, multiple))
        for h, w in (list(frame_shapes) or [(64, 64)])
    }
    start = time.perf_counter()
    warmup(engine, sorted(shapes))
    return (time.perf_counter() - start) * 1e3


class ModelServer:
    """Holds the serving model and follows the database's active model unless pinned."""

    def __init__(
        self,
        db: Database,
        *,
        pinned: str | None = None,
        options: EngineOptions | None = None,
    ) -> None:
        self._db = db
        self._pinned = pinned
        self._options = options if options is not None else EngineOptions()
        self._rejected: str | None = None
        self._thresholds: dict[tuple[str, str], tuple[float, str]] = {}
        self.swaps = 0
        self.rejects = 0
        self.current = self._initial()

    def _load(self, path: str | None, source: str, registry_id: str | None) -> ServedModel:
        return load_served(path, source, registry_id, self._options)

    def _initial(self) -> ServedModel:
        if self._pinned is not None:
            return self._load(self._pinned, "pinned", None)
        record = active_model(self._db)
        if record is not None:
            try:
                return self._load(record.path, "active", record.model_id)
            except Exception as exc:  # any bundle or backend failure: fall back, do not die
                self._reject(record.model_id, record.path, exc)
        return self._load(None, DEFAULT_SOURCE, None)

    def _reject(self, model_id: str, path: str, exc: BaseException) -> None:
        self._rejected = model_id
        self.rejects += 1
        logger.error(
            "model rejected model_id=%s path=%s error=%s; still serving %s",
            model_id,
            path,
            exc,
            getattr(getattr(self, "current", None), "model_id", "the bundled model"),
        )

    def refresh(self) -> bool:
        """Swap in the database's active model if it changed; True when a swap happened.

        With no active model any more, the bundled model takes over again.
        Cached thresholds are forgotten, so new calibrations apply from the
        next lookup on.
        """
        self._thresholds.clear()
        if self._pinned is not None:
            return False
        wanted = active_model_id(self._db)  # the id only: the whole record when it changed
        if wanted == self.current.registry_id or (wanted is not None and wanted == self._rejected):
            return False
        if wanted is None:
            if self.current.source == DEFAULT_SOURCE:
                return False
            record = None
        else:
            record = active_model(self._db)  # the whole record, now that it changed
            if record is None or record.model_id != wanted:
                return False  # changed again in between: the next check follows it
        try:
            if record is None:
                served = self._load(None, DEFAULT_SOURCE, None)
            else:
                served = self._load(record.path, "active", record.model_id)
        except Exception as exc:  # a bad bundle must never stop the daemon
            self._reject(wanted or DEFAULT_SOURCE, "" if record is None else record.path, exc)
            return False
        old = self.current
        self.current = served
        self._rejected = None
        self.swaps += 1
        logger.info(
            "model swapped model_id=%s source=%s previous=%s backend=%s",
            served.model_id,
            served.source,
            old.model_id,
            served.engine.name,
        )
        old.engine.close()
        return True

    def threshold(self, material: str) -> tuple[float, str]:
        """(threshold, source) for ``material`` with the serving model.

        The latest calibration in the database for (material, model id) wins,
        else the bundle's own per-material or default threshold. ``source`` is
        "calibration" or "bundle". The answer is cached per (model id,
        material) until the next :meth:`refresh`.
        """
        model = self.current
        key = (model.model_id, material)
        cached = self._thresholds.get(key)
        if cached is not None:
            return cached
        calibrated = latest_threshold(self._db, material, model.model_id)
        if calibrated is not None:
            found = calibrated, "calibration"
        else:
            found = model.bundle.threshold_for(material), "bundle"
        self._thresholds[key] = found
        return found

    def close(self) -> None:
        self.current.engine.close()
