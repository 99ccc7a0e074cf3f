"""Reprocess archived frames with a model on a Dask cluster, recording each result once.

The client finds the frame files (the daemon's patterns and rules), the
workers hash them, the client drops every content the model already has a
result for (and repeats within the run), the workers segment the rest, and the
client records each result as it arrives: an interrupted run keeps what it
recorded and a rerun does only what is left.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from temseg.config import Settings
from temseg.frames.find import relative_posix, scan_backlog
from temseg.reprocess.tasks import Hashed, ModelSpec, Outcome, Rules, hash_files, segment_file

logger = logging.getLogger(__name__)

HASH_CHUNK = 32
"""Files hashed per task: one task per file cost more in scheduling than hashing."""


class ReprocessError(RuntimeError):
    """Reprocessing cannot start: the message names the path, model or scheduler and the fix."""


@dataclass(frozen=True)
class Found:
    """A frame file: its absolute ``path`` and its ``relative`` path under the given root."""

    path: str
    relative: str


@dataclass
class Summary:
    """What a run did. ``found`` frame files; ``skipped`` had a result of the model
    already (``repeats``: the same content twice in this run, done once);
    ``done``/``failed`` frames recorded now (each 2-D frame of a stack counts);
    ``unreadable`` not recorded (a rerun tries again); ``frames_per_s`` of the
    frames segmented, over ``segment_s`` from the
    first segmentation task to the last result; ``interrupted`` by Ctrl-C."""

    model_id: str
    workers: int
    found: int = 0
    skipped: int = 0
    repeats: int = 0
    done: int = 0
    failed: int = 0
    unreadable: int = 0
    elapsed_s: float = 0.0
    segment_s: float = 0.0
    model_loads: int = 0
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def segmented(self) -> int:
        return self.done + self.failed

    @property
    def frames_per_s(self) -> float:
        return self.segmented / self.segment_s if self.segment_s > 0 else 0.0

    @property
    def handled(self) -> int:
        return self.skipped + self.repeats + self.done + self.failed + self.unreadable


def find_frames(paths: Sequence[str | os.PathLike[str]], settings: Settings) -> list[Found]:
    """Frame files under each of ``paths`` (folders: the daemon's patterns, recursion
    and symlink rules, oldest first; a file is taken as it is), without repeats."""
    found: list[Found] = []
    seen: set[str] = set()
    for given in paths:
        root = Path(given).expanduser()
        if root.is_dir():
            root = root.resolve()
            files = scan_backlog(
                root, settings.patterns, settings.recursive, settings.follow_symlinks
            )
            entries = [Found(str(p), relative_posix(p, root)) for p in files]
        elif root.is_file():
            entries = [Found(str(root.resolve()), root.name)]
        else:
            raise ReprocessError(f"{given}: no such file or folder")
        for entry in entries:
            if entry.path not in seen:
                seen.add(entry.path)
                found.append(entry)
    return found


def resolve_model(db: Engine, choice: str) -> tuple[str | None, str]:
    """(bundle path or ``None`` for the bundled model, model id) for ``--model``.

    ``choice``: "auto" (the database's active model, else the bundled one),
    "active", "bundled", a bundle folder, or the id of a registered model.
    """
    from temseg.model.bundle import BundleError, load_bundle
    from temseg.store import active_model, list_models

    path: str | None
    if choice == "bundled":
        path = None
    elif choice in ("auto", "active"):
        record = active_model(db)
        if record is None and choice == "active":
            raise ReprocessError(
                "--model active: the database has no active model "
                "(promote one with 'temseg models promote ID', or pass --model)"
            )
        path = None if record is None else record.path
    elif Path(choice).expanduser().is_dir():
        path = str(Path(choice).expanduser().resolve())
    else:
        records = {r.model_id: r for r in list_models(db)}
        if choice not in records:
            known = ", ".join(records) or "none"
            raise ReprocessError(
                f"--model {choice}: neither a bundle folder nor a registered model "
                f"(registered: {known})"
            )
        path = records[choice].path
    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        raise ReprocessError(f"--model {choice}: {exc}") from exc
    return path, bundle.model_id


def _client(scheduler: str, workers: int, processes: bool) -> tuple[Any, Any]:
    """(client, local cluster or ``None``) for ``scheduler`` "local" or "tcp://HOST:PORT"."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ReprocessError(
            "reprocessing needs dask.distributed: pip install 'temseg[distributed]'"
        ) from exc
    if scheduler == "local":
        # Worker processes talk over TCP on the loopback; in-process workers in memory.
        where = {"host": "127.0.0.1"} if processes else {}
        with _workers_ignore_ctrl_c():
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=processes,
                dashboard_address=None,
                worker_dashboard_address=None,
                silence_logs=logging.ERROR,
                **where,
            )
        return Client(cluster), cluster
    if not scheduler.startswith("tcp://"):
        raise ReprocessError(f"--scheduler {scheduler}: use 'local' or tcp://HOST:PORT")
    try:
        return Client(scheduler, timeout="20s"), None
    except OSError as exc:
        raise ReprocessError(f"--scheduler {scheduler}: cannot connect ({exc})") from exc


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start local worker processes with SIGINT ignored (they inherit it): Ctrl-C in a
    terminal reaches the whole process group, and only the client should act on it,
    cancelling the tasks and closing the workers itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """While inside, the first Ctrl-C (SIGINT) sets ``stop``, a second one raises
    KeyboardInterrupt as usual (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _record(db: Engine, outcome: Outcome, model_id: str, instrument: str | None) -> None:
    """Record ``outcome`` as the model's result; a database that is locked or restarting
    is retried for up to a minute (the record is idempotent)."""
    from temseg.store import record_frame

    assert outcome.sha256 is not None
    delay, deadline = 0.05, time.monotonic() + 60.0
    while True:
        try:
            record_frame(
                db,
                source_path=outcome.path,
                sha256=outcome.sha256,
                size_bytes=outcome.size_bytes,
                status=outcome.status,
                material=outcome.material,
                error=outcome.error,
                model_id=model_id,
                threshold=outcome.threshold,
                n_particles=outcome.n_particles,
                area_fraction=outcome.area_fraction,
                height=outcome.height,
                width=outcome.width,
                pixel_nm=outcome.pixel_nm,
                pixel_nm_yx=outcome.pixel_nm_yx,
                frame_index=outcome.frame_index,
                n_frames=outcome.n_frames,
                backend=outcome.backend,
                instrument=instrument,
                particles=outcome.particles,
            )
            return
        except OperationalError as exc:
            if time.monotonic() > deadline:
                raise
            logger.warning("database busy during record, retrying in %.2f s: %s", delay, exc.orig)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def reprocess(
    paths: Sequence[str | os.PathLike[str]],
    db: Engine,
    *,
    model: str = "auto",
    settings: Settings | None = None,
    scheduler: str = "local",
    workers: int = 1,
    processes: bool = True,
    instrument: str | None = None,
    progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Segment every frame under ``paths`` that ``model`` has no result for, and record it.

    Parameters
    ----------
    paths
        Frame files and folders (searched with the settings' patterns).
    db
        The results database (:func:`temseg.store.connect`).
    model
        "auto", "active", "bundled", a bundle folder or a registered model id
        (see :func:`resolve_model`).
    settings
        Patterns, recursion, folder rules, the default material, backend,
        device, threads and tiling; defaults when ``None``.
    scheduler
        "local" (a cluster of ``workers`` workers on 127.0.0.1, in worker
        processes unless ``processes`` is false) or the ``tcp://HOST:PORT`` of a
        running Dask scheduler, whose workers must see ``paths`` as this host does.
    workers
        Workers of the local cluster (ignored with a scheduler address).
    instrument
        Recorded with every result (``None``: none).
    progress
        Called with the running summary after each frame is handled.

    Returns
    -------
    Summary
        Counts and timings; ``interrupted`` when stopped by Ctrl-C, after
        cancelling outstanding tasks (what was recorded stays recorded).
    """
    from temseg.store import latest_thresholds, recorded_contents

    settings = Settings() if settings is None else settings
    if workers < 1:
        raise ReprocessError(f"--workers must be at least 1, got {workers}")
    if instrument is not None and not 0 < len(instrument) <= 64:
        raise ReprocessError(f"--instrument must be 1 to 64 characters, got {instrument!r}")
    started = time.monotonic()
    path, model_id = resolve_model(db, model)
    frames = find_frames(paths, settings)
    local = scheduler == "local"
    threads = settings.threads or (max(1, (os.cpu_count() or 1) // workers) if local else 0)
    spec = ModelSpec(
        model_id=model_id,
        path=path,
        backend=settings.backend,
        device=settings.device,
        threads=threads,
        tile=settings.tile,
        tile_overlap=settings.tile_overlap,
    )
    rules = Rules(
        folder_rules=dict(settings.folder_rules),
        default_material=settings.material,
        thresholds=latest_thresholds(db, model_id),
        min_particle_nm=settings.min_particle_nm,
    )
    summary = Summary(model_id=model_id, workers=workers, found=len(frames))
    done_contents = recorded_contents(db, model_id)
    client, cluster = _client(scheduler, workers, processes)
    if not local:
        summary.workers = len(client.scheduler_info().get("workers", {}))
    relative = {f.path: f.relative for f in frames}
    in_flight_limit = max(4, 4 * max(1, summary.workers))
    futures: set[Any] = set()
    try:
        from distributed import as_completed

        hash_futures = [
            client.submit(hash_files, [f.path for f in frames[i : i + HASH_CHUNK]], pure=False)
            for i in range(0, len(frames), HASH_CHUNK)
        ]
        hash_chunks = set(hash_futures)
        futures.update(hash_futures)
        queue = as_completed(hash_futures)
        waiting: deque[Hashed] = deque()
        submitted: set[str] = set()
        in_flight = 0
        segment_started: float | None = None

        def submit_waiting() -> None:
            nonlocal in_flight, segment_started
            while waiting and in_flight < in_flight_limit:
                item = waiting.popleft()
                future = client.submit(
                    segment_file, item.path, relative[item.path], spec, rules, pure=False
                )
                futures.add(future)
                queue.add(future)
                in_flight += 1
                if segment_started is None:
                    segment_started = time.monotonic()

        def handle(future: Any) -> None:
            nonlocal in_flight
            futures.discard(future)
            result = _result(future)
            if future in hash_chunks:
                for item in result:
                    if item.sha256 is None:
                        summary.unreadable += 1
                        summary.errors.append(item.error or item.path)
                    elif item.sha256 in done_contents:
                        summary.skipped += 1
                    elif item.sha256 in submitted:
                        summary.repeats += 1
                    else:
                        submitted.add(item.sha256)
                        waiting.append(item)
                        continue
                    if progress is not None:
                        progress(summary)
                return
            in_flight -= 1
            outcomes: list[Outcome] = result  # one per frame of the file
            for outcome in outcomes:
                if outcome.unreadable or outcome.sha256 is None:
                    summary.unreadable += 1
                    summary.errors.append(outcome.error or outcome.path)
                    continue
                _record(db, outcome, model_id, instrument)
                if outcome.status == "done":
                    summary.done += 1
                else:
                    summary.failed += 1
                    summary.errors.append(outcome.error or outcome.path)
            if segment_started is not None:
                summary.segment_s = time.monotonic() - segment_started
            if progress is not None:
                progress(summary)

        # Polled rather than blocking in Dask's calls, which a KeyboardInterrupt
        # raised inside leaves half-cancelled; Ctrl-C only sets ``stop``.
        stop = threading.Event()
        with _ctrl_c_sets(stop):
            while not queue.is_empty() and not stop.is_set():
                batch = queue.next_batch(block=False)
                if not batch:
                    stop.wait(0.05)
                    continue
                for future in batch:
                    handle(future)
                submit_waiting()
        if stop.is_set():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        summary.interrupted = True
        client.cancel(list(futures))
    finally:
        try:
            if not summary.interrupted:
                loads = client.run(_loads_on_worker)
                summary.model_loads = sum(int(n) for n in loads.values())
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
                if not processes:
                    from temseg.reprocess.tasks import release_models

                    release_models()
    summary.elapsed_s = time.monotonic() - started
    return summary


def _result(future: Any) -> Any:
    """A task's result; a model that does not load on a worker stops the run (every
    frame would fail), any other error is the frame's (not recorded, retried next run)."""
    from temseg.engine.base import EngineError
    from temseg.model.bundle import BundleError

    if future.status != "error":
        return future.result()
    exc = future.exception()
    if isinstance(exc, BundleError | EngineError):
        raise ReprocessError(f"the model does not load on a worker: {exc}") from exc
    key = str(future.key)
    return Outcome(key, None, 0, "failed", error=f"task {key}: {exc!r}", unreadable=True)


def _loads_on_worker(dask_worker: Any) -> int:
    """Models the calling worker loaded (run by ``Client.run`` on each worker)."""
    from temseg.reprocess.tasks import model_loads

    return model_loads().get(str(dask_worker.address), 0)
