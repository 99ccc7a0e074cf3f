"""The ``temseg`` command line: one typer app, one function per subcommand.

Each command parses flags and calls into the package; no logic lives here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer

from temseg import __version__
from temseg.config import Settings

app = typer.Typer(
    name="temseg",
    help="Live U-Net segmentation of HRTEM frames: watch a folder, publish masks over ZeroMQ, "
    "record results in SQLite; offline training, calibration and benchmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"temseg {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """temseg: segment HRTEM frames as they are acquired."""


@app.command()
def simulate(
    material: str = typer.Option(
        "Au",
        "--material",
        "-m",
        help="Material, or a comma-separated list (e.g. Au,CdSe) taken in turn by frame "
        "index. Known: Au (fcc), CdSe (wurtzite).",
    ),
    count: int = typer.Option(10, "--count", "-n", min=1, help="Number of frames to write."),
    size: int = typer.Option(512, "--size", min=16, help="Frame size in pixels (square)."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder (created if missing)."),
    seed: int = typer.Option(
        0, "--seed", min=0, help="Run seed; frame i is seeded from (seed, material, i)."
    ),
    pixel_nm: float | None = typer.Option(
        None, "--pixel-nm", help="Pixel size in nm per pixel (default 0.05)."
    ),
    start_index: int = typer.Option(
        0, "--start-index", min=0, help="Index of the first frame (names NAME_00042...)."
    ),
    particles: int | None = typer.Option(
        None, "--particles", min=0, help="Particles per frame (default: random, 0-4)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace existing frames of the same names."
    ),
) -> None:
    """Write synthetic HRTEM frames with ground-truth masks.

    Per frame: NAME.tif (uint16 image; pixel_nm and material in the TIFF
    metadata), NAME_mask.tif (uint8, 1 = particle) and NAME.json (all
    simulation parameters and particles), NAME = MATERIAL_INDEX, e.g.
    Au_00007. Physics: faceted Au/CdSe particles near a zone axis on
    amorphous carbon, phase-object exit wave, objective lens with partial
    coherence, camera noise (see docs/synth.md).
    """
    import time
    from pathlib import Path

    from temseg.frames.write import write_frame_tiff, write_mask_tiff, write_sidecar
    from temseg.synth import (
        DEFAULT_PIXEL_NM,
        MATERIALS,
        frame_name,
        frame_seed,
        simulate_frame,
    )

    names = [m.strip() for m in material.split(",") if m.strip()]
    unknown = [m for m in names if m not in MATERIALS]
    if not names or unknown:
        raise typer.BadParameter(
            f"unknown material {', '.join(unknown) or repr(material)}; "
            f"known: {', '.join(MATERIALS)}",
            param_hint="--material",
        )
    pixel = DEFAULT_PIXEL_NM if pixel_nm is None else pixel_nm
    if not pixel > 0:
        raise typer.BadParameter("must be positive (nm per pixel)", param_hint="--pixel-nm")
    out_dir = Path(out)
    plan = [
        (names[i % len(names)], i, out_dir / frame_name(names[i % len(names)], i))
        for i in range(start_index, start_index + count)
    ]
    if not overwrite:
        suffixes = (".tif", "_mask.tif", ".json")
        taken = [stem.with_name(stem.name + s) for _, _, stem in plan for s in suffixes]
        existing = [p for p in taken if p.exists()]
        if existing:
            typer.echo(
                f"error: {existing[0]} exists ({len(existing)} files in the way); "
                "use --overwrite or another --out/--start-index",
                err=True,
            )
            raise typer.Exit(1)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        typer.echo(f"error: cannot create {out_dir}: {exc}", err=True)
        raise typer.Exit(1) from exc

    start = time.perf_counter()
    per_material = dict.fromkeys(names, 0)
    n_particles = 0
    for name, index, stem in plan:
        frame = simulate_frame(
            name, size, frame_seed(seed, name, index), pixel_nm=pixel, n_particles=particles
        )
        meta = dict(frame.metadata, frame_index=index, run_seed=seed)
        scalars = {k: v for k, v in meta.items() if not isinstance(v, list | dict)}
        try:
            write_frame_tiff(
                stem.with_name(stem.name + ".tif"), frame.image, metadata=scalars, pixel_nm=pixel
            )
            write_mask_tiff(stem.with_name(stem.name + "_mask.tif"), frame.mask)
            write_sidecar(stem.with_name(stem.name + ".json"), meta)
        except OSError as exc:
            typer.echo(f"error: writing {stem}: {exc}", err=True)
            raise typer.Exit(1) from exc
        per_material[name] += 1
        n_particles += frame.metadata["n_particles"]
    elapsed = time.perf_counter() - start
    mix = ", ".join(f"{k} {v}" for k, v in per_material.items())
    typer.echo(
        f"wrote {count} frames ({mix}) of {size}x{size} px at {pixel:g} nm/px, "
        f"{n_particles} particles, to {out_dir} in {elapsed:.1f} s "
        f"({1e3 * elapsed / count:.0f} ms/frame)"
    )


@app.command()
def segment(
    frames: list[str] = typer.Argument(
        ..., metavar="FILE...", help="Frame files (TIFF, MRC, EMD, DM3/DM4, SER)."
    ),
    material: str | None = typer.Option(
        None, "--material", help="Material of all frames (default: each frame's metadata)."
    ),
    out: str | None = typer.Option(
        None, "--out", help="Folder for NAME_mask.tif (uint8, 1 = particle); none: no masks."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Bundle folder, 'bundled', a registered id or 'active' (default: the database's "
        "active model with --db, else the bundled one).",
    ),
    db: str | None = typer.Option(
        None,
        "--db",
        help="Database whose latest calibration for (material, model) sets the threshold, "
        "as in the daemon.",
    ),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        min=0.0,
        max=1.0,
        help="Default: the latest calibration in --db, else the model's for the material.",
    ),
    pixel_nm: float | None = typer.Option(
        None, "--pixel-nm", min=0.0, help="Pixel size in nm, overriding the files' own."
    ),
    min_area: int = typer.Option(1, "--min-area", min=1, help="Smallest particle (pixels)."),
    min_particle_nm: float = typer.Option(
        Settings.min_particle_nm,
        "--min-particle-nm",
        min=0.0,
        help="Smallest particle's equivalent diameter (nm; needs the pixel size; 0: none).",
    ),
    save_probability: bool = typer.Option(
        False,
        "--save-probability",
        help="Also write NAME_prob.tif (float32 probability of particle) into --out.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace existing output files (inputs are never replaced)."
    ),
    backend: str = typer.Option("auto", "--backend", help="auto | torch | onnxruntime | tensorrt."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0: all cores)."),
) -> None:
    """Segment frames and print one JSON line per frame (particles, sizes, timings).

    Every 2-D frame of a stack or multi-frame file gets its own line with its
    ``frame_index``. A file that cannot be read gives one error line on
    stderr; the others are still segmented and the exit code is 1. Existing
    mask or probability files are not replaced unless --overwrite is given.
    """
    import json
    from pathlib import Path

    from temseg.engine import EngineError, load_engine
    from temseg.engine.base import resolve_device
    from temseg.frames import FrameError
    from temseg.inference import default_tile
    from temseg.model.bundle import BundleError
    from temseg.model.resolve import resolve_bundle

    if pixel_nm is not None and pixel_nm <= 0:
        raise typer.BadParameter("must be positive (nm per pixel)", param_hint="--pixel-nm")
    if save_probability and out is None:
        raise typer.BadParameter(
            "needs --out, the folder for NAME_prob.tif", param_hint="--save-probability"
        )
    out_dir = None if out is None else Path(out)
    store = None
    try:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        bundle = resolve_bundle(model, db)
        if db is not None:
            from temseg.store import connect

            store = connect(db, create=False)
        engine = load_engine(bundle, backend=backend, device=device, threads=threads)
        tile = default_tile(resolve_device(device))
    except (OSError, BundleError, EngineError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc

    def level_for(used: str | None) -> tuple[float, str]:
        if threshold is not None:
            return threshold, "option"
        if store is not None and used is not None:
            from temseg.store import latest_threshold

            calibrated = latest_threshold(store, used, bundle.model_id)
            if calibrated is not None:
                return calibrated, "calibration"
        return bundle.threshold_for(used), "model"

    def target(path: Path, suffix: str) -> Path:
        assert out_dir is not None
        file = out_dir / f"{path.stem}{suffix}.tif"
        if file.resolve() in inputs:
            raise FrameError(f"{path}: refusing to overwrite input {file}")
        if file.exists() and not overwrite:
            raise FrameError(f"{file} exists; give --overwrite to replace it, or another --out")
        return file

    inputs = {Path(f).resolve() for f in frames}
    failed = 0
    try:
        for name in frames:
            path = Path(name)
            try:
                # one file, one read: a bad file fails whole, before any of its frames is printed
                records = _segment_file(
                    path,
                    engine,
                    bundle,
                    level_for=level_for,
                    pixel_nm=pixel_nm,
                    material=material,
                    min_area=min_area,
                    min_particle_nm=min_particle_nm,
                    tile=tile,
                    target=None if out_dir is None else target,
                    save_probability=save_probability,
                )
            except (FrameError, OSError, ValueError) as exc:
                failed += 1
                typer.echo(f"error: {exc}", err=True)
                continue
            for record in records:
                typer.echo(json.dumps(record))
    finally:
        engine.close()
        if store is not None:
            store.dispose()
    if failed:
        typer.echo(f"{failed} of {len(frames)} files failed", err=True)
        raise typer.Exit(1)


def _segment_file(
    path: Any,
    engine: Any,
    bundle: Any,
    *,
    level_for: Callable[[str | None], tuple[float, str]],
    pixel_nm: float | None,
    material: str | None,
    min_area: int,
    min_particle_nm: float,
    tile: int,
    target: Callable[[Any, str], Any] | None,
    save_probability: bool,
) -> list[dict[str, Any]]:
    """JSON records of every frame of one file; masks written when ``target`` is given.

    ``target(path, suffix)`` names an output file and refuses one it may not
    replace; every frame's outputs are checked before anything is written. A
    single-frame file's mask is ``NAME_mask.tif`` (``NAME_prob.tif`` with
    ``save_probability``), frame K of a stack's ``NAME_K_mask.tif``.
    """
    import dataclasses

    from temseg.frames import read_frames
    from temseg.frames.write import write_mask_tiff, write_probability_tiff
    from temseg.inference import segment_frame

    frames = read_frames(path)
    note = frames[0].metadata.get("pixel_nm_note")
    if note and pixel_nm is None:
        typer.echo(f"warning: {path}: {note}", err=True)
    outputs = []
    for frame in frames:
        suffix = "" if frame.n_frames == 1 else f"_{frame.frame_index}"
        mask_file = prob_file = None
        if target is not None:
            mask_file = target(path, f"{suffix}_mask")
            if save_probability:
                prob_file = target(path, f"{suffix}_prob")
        outputs.append((mask_file, prob_file))
    records = []
    for frame, (mask_file, prob_file) in zip(frames, outputs, strict=True):
        if pixel_nm is not None:
            frame = dataclasses.replace(frame, pixel_nm=pixel_nm, pixel_nm_yx=(pixel_nm, pixel_nm))
        used = material if material is not None else frame.material
        level, source = level_for(used)
        result = segment_frame(
            frame,
            engine,
            bundle,
            threshold=level,
            min_area_px=min_area,
            min_diameter_nm=min_particle_nm,
            material=used,
            tile=tile,
        )
        if mask_file is not None:
            write_mask_tiff(mask_file, result.segmentation.mask)
        if prob_file is not None:
            write_probability_tiff(prob_file, result.probability)
        record: dict[str, Any] = {
            "file": str(path),
            "mask": None if mask_file is None else str(mask_file),
        }
        if prob_file is not None:
            record["probability"] = str(prob_file)
        record.update(model_id=bundle.model_id, threshold_source=source, **result.to_dict())
        records.append(record)
    return records


@app.command()
def daemon(
    watch: str | None = typer.Option(None, "--watch", help="Acquisition folder to watch."),
    db: str | None = typer.Option(None, "--db", help="Database URL or SQLite file."),
    instrument: str | None = typer.Option(
        None, "--instrument", help="Microscope name recorded with every frame."
    ),
    publish: str | None = typer.Option(
        None, "--publish", help="ZeroMQ endpoint to bind, e.g. tcp://127.0.0.1:5557."
    ),
    material: str | None = typer.Option(
        None, "--material", help="Material when neither metadata nor folder rules say."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Pin a model bundle (default: the db's active, else bundled)."
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="auto | torch | onnxruntime | tensorrt."
    ),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda."),
    threads: int | None = typer.Option(None, "--threads", min=0, help="CPU threads (0: all)."),
    config: str | None = typer.Option(
        None, "--config", help="TOML settings file (default: $TEMSEG_CONFIG, /etc/temseg/...)."
    ),
    polling: bool | None = typer.Option(
        None, "--polling/--inotify", help="Poll the folder (network shares) or use inotify."
    ),
    stable_s: float | None = typer.Option(
        None, "--stable-s", min=0.0, help="Seconds of unchanged size+mtime = complete."
    ),
    masks: str | None = typer.Option(
        None, "--masks", help="Also write mask TIFFs here (never inside --watch)."
    ),
    queue_size: int | None = typer.Option(None, "--queue-size", min=1, help="Frame queue."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Max batch."),
    compile_: bool | None = typer.Option(
        None, "--compile/--eager", help="torch on CUDA: torch.compile at start (minutes)."
    ),
    warmup_shape: list[str] | None = typer.Option(
        None, "--warmup-shape", help="Frame shape HxW (px) to compile/warm before READY; repeat."
    ),
    log_level: str | None = typer.Option(None, "--log-level", help="DEBUG | INFO | WARNING."),
    curve_keys: str | None = typer.Option(
        None,
        "--curve-keys",
        help="Key folder from `temseg keys generate`: encrypt the stream (CURVE) and accept "
        "only the clients whose public keys are in its authorized/.",
    ),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        help="HOST:PORT for /metrics, /healthz, /readyz (default 127.0.0.1:9557); 'off'.",
    ),
    stuck_after_s: float | None = typer.Option(
        None, "--stuck-after-s", min=0.001, help="A frame this long in one stage = wedged."
    ),
    send_preview_px: int | None = typer.Option(
        None, "--send-preview-px", min=0, help="Preview of the frame in each message (px; 0 none)."
    ),
) -> None:
    """Watch a folder and segment each new frame until SIGTERM/SIGINT (systemd: Type=notify)."""
    from temseg.config import ConfigError, load_settings
    from temseg.daemon import configure_logging, serve
    from temseg.daemon.lifecycle import raise_file_limit

    overrides = {
        "watch": watch,
        "db": db,
        "instrument": instrument,
        "publish": publish,
        "material": material,
        "model": model,
        "backend": backend,
        "device": device,
        "threads": threads,
        "polling": polling,
        "stable_s": stable_s,
        "masks": masks,
        "queue_size": queue_size,
        "batch_size": batch_size,
        "compile": compile_,
        "warmup_shapes": warmup_shape or None,
        "log_level": log_level,
        "curve_keys": curve_keys,
        "metrics": metrics,
        "stuck_after_s": stuck_after_s,
        "send_preview_px": send_preview_px,
    }
    try:
        settings = load_settings(config, overrides)
        configure_logging(settings.log_level)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise_file_limit()
    try:
        stats = serve(settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:  # e.g. no model bundle, port in use, database schema too new
        import logging

        log = logging.getLogger("temseg.daemon")
        log.critical("daemon failed: %s", exc)
        log.debug("traceback of the failure", exc_info=True)
        raise typer.Exit(1) from exc
    if stats.abandoned:  # stopping gave up on a locked database: said so in the log
        raise typer.Exit(1)


@app.command()
def demo(
    frames: int = typer.Option(12, "--frames", min=1, help="Frames the simulated camera writes."),
    size: int = typer.Option(256, "--size", min=32, help="Frame side (pixels)."),
    interval: float = typer.Option(0.4, "--interval", min=0.0, help="Seconds between frames."),
    db: str | None = typer.Option(None, "--db", help="Database (default: a temporary file)."),
    publish: str | None = typer.Option(
        None, "--publish", help="Endpoint to bind (default: 127.0.0.1, a free port)."
    ),
    model: str | None = typer.Option(None, "--model", help="Model bundle (default: bundled)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary frames and database."),
    log_level: str = typer.Option("WARNING", "--log-level", help="Daemon log level."),
    view: bool = typer.Option(False, "--view", help="Serve the live page on the demo stream."),
    listen: str = typer.Option(
        "127.0.0.1:8557", "--listen", help="With --view: HOST:PORT of the page (0: free port)."
    ),
) -> None:
    """Live demo: a simulated camera writes Au/CdSe frames, the daemon segments them."""
    import threading

    from temseg.config import ConfigError
    from temseg.daemon import configure_logging
    from temseg.daemon.demo import run_demo
    from temseg.model.bundle import BundleError

    def linger() -> None:
        typer.echo("all frames in: the page stays up until Ctrl-C")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass

    configure_logging(log_level)
    try:
        summary = run_demo(
            frames=frames,
            size=size,
            interval_s=interval,
            db=db,
            publish=publish,
            model=model,
            keep=keep,
            view=listen if view else None,
            linger=linger if view else None,
            open_browser=view,
            echo=typer.echo,
        )
    except ImportError as exc:
        typer.echo(f"error: {exc.name} is missing: pip install 'temseg[view]'", err=True)
        raise typer.Exit(2) from exc
    except (ConfigError, BundleError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if summary.masks + summary.errors < summary.frames:
        raise typer.Exit(1)


@app.command()
def subscribe(
    connect: str | None = typer.Option(
        None, "--connect", help="Publisher endpoint (default: the daemon's publish setting)."
    ),
    topic: list[str] = typer.Option(
        ["temseg."], "--topic", help="Topic prefix, e.g. temseg.mask.Au; repeatable."
    ),
    count: int | None = typer.Option(None, "--count", min=1, help="Stop after N messages."),
    timeout: float | None = typer.Option(
        None, "--timeout", min=0, help="Give up after S seconds without a message (exit 1)."
    ),
    curve_server_key: str | None = typer.Option(
        None, "--curve-server-key", help="Server public key file (server.key) for CURVE."
    ),
    curve_client_key: str | None = typer.Option(
        None, "--curve-client-key", help="This client's secret key file (NAME.key_secret)."
    ),
    config: str | None = typer.Option(None, "--config", help="Settings file (TOML)."),
) -> None:
    """Print the header of each stream message as one JSON line; gaps go to stderr."""
    import json
    import logging
    from pathlib import Path

    from temseg.config import ConfigError, endpoint_problem, load_settings
    from temseg.stream import Subscriber

    _check_curve_pair(curve_server_key, curve_client_key)
    if connect is None:
        try:
            publish = load_settings(config).publish
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        connect = _local_endpoint(publish)
    problem = endpoint_problem(connect)
    if problem is not None:
        typer.echo(f"error: --connect: {problem}", err=True)
        raise typer.Exit(2)
    logging.basicConfig(format="temseg subscribe: %(message)s", level=logging.WARNING)
    try:
        subscriber = Subscriber(
            connect,
            topics=topic,
            curve_keys=None if curve_server_key is None else Path(curve_server_key),
            client_key=None if curve_client_key is None else Path(curve_client_key),
            timeout_ms=None if timeout is None else int(timeout * 1000),
        )
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    encrypted = "with CURVE" if curve_server_key is not None else "without encryption"
    typer.echo(
        f"temseg subscribe: connecting to {connect} ({encrypted}), topics {', '.join(topic)}; "
        "waiting for messages" + ("" if timeout is None else f" (at most {timeout:g} s)") + "...",
        err=True,
    )
    received = 0
    with subscriber:
        try:
            for message in subscriber:
                typer.echo(json.dumps(message.header))
                received += 1
                if count is not None and received >= count:
                    return
        except KeyboardInterrupt:
            return
    hint = ""
    if received == 0 and curve_server_key is None:
        hint = (
            "; is a daemon publishing there? If it runs with curve_keys, this plaintext "
            "client receives nothing: pass --curve-server-key and --curve-client-key"
        )
    typer.echo(f"no message for {timeout:g} s after {received} message(s){hint}", err=True)
    raise typer.Exit(1)


@app.command()
def view(
    connect: str | None = typer.Option(
        None, "--connect", help="Publisher endpoint (default: the daemon's publish setting)."
    ),
    listen: str = typer.Option(
        "127.0.0.1:8557", "--listen", help="HOST:PORT of the page (port 0: a free one)."
    ),
    curve_server_key: str | None = typer.Option(
        None, "--curve-server-key", help="Server public key file (server.key) for CURVE."
    ),
    curve_client_key: str | None = typer.Option(
        None, "--curve-client-key", help="This client's secret key file (NAME.key_secret)."
    ),
    config: str | None = typer.Option(None, "--config", help="Settings file (TOML)."),
) -> None:
    """Live page in the browser: newest frame and mask, particles, throughput, errors."""
    import threading
    from pathlib import Path

    from temseg.config import ConfigError, load_settings
    from temseg.daemon.rules import parse_listen

    _check_curve_pair(curve_server_key, curve_client_key)
    try:
        address = parse_listen(listen, "--listen")
        if address is None:
            raise ConfigError("--listen 'off': nothing to serve; give HOST:PORT")
        if connect is None:
            connect = _local_endpoint(load_settings(config).publish)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        from temseg.view.server import Viewer
    except ImportError as exc:
        typer.echo(f"error: {exc.name} is missing: pip install 'temseg[view]'", err=True)
        raise typer.Exit(2) from exc
    try:
        viewer = Viewer(
            connect,
            *address,
            curve_keys=None if curve_server_key is None else Path(curve_server_key),
            client_key=None if curve_client_key is None else Path(curve_client_key),
        )
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"viewer: {viewer.url} (stream {connect}); Ctrl-C stops")
    with viewer:
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


def _check_curve_pair(curve_server_key: str | None, curve_client_key: str | None) -> None:
    if (curve_server_key is None) != (curve_client_key is None):
        typer.echo("error: CURVE needs both --curve-server-key and --curve-client-key", err=True)
        raise typer.Exit(2)


def _local_endpoint(publish: str) -> str:
    """The daemon's ``publish`` endpoint as this machine connects to it (``*`` -> 127.0.0.1)."""
    import re

    return re.sub(r"^tcp://(\*|0\.0\.0\.0):", "tcp://127.0.0.1:", publish)


@app.command()
def status(
    db: str | None = typer.Option(None, "--db", help="Database URL or file (default: settings)."),
    minutes: float = typer.Option(10.0, "--minutes", min=0.01, help="Throughput window."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of text."),
    by: str = typer.Option(
        "material", "--by", help="Group the counts by material, instrument or model."
    ),
    config: str | None = typer.Option(None, "--config", help="Settings file (TOML)."),
) -> None:
    """Frames recorded per status and material (or instrument, model), the last frame,
    recent throughput."""
    import json

    from sqlalchemy.exc import OperationalError

    from temseg.config import ConfigError, load_settings
    from temseg.options import StatusGroup, check_choice
    from temseg.store import SchemaError, connect, status_summary

    try:
        check_choice("--by", by, StatusGroup)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        url = load_settings(config, overrides={"db": db}).db
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        engine = connect(url, create=False)
        try:
            summary = status_summary(engine, window_minutes=minutes)
        finally:
            engine.dispose()
    except (FileNotFoundError, SchemaError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except OperationalError as exc:
        typer.echo(f"error: {url}: {_first_line(exc.orig)}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return

    def counts(by_status: dict[str, int]) -> str:
        return ", ".join(f"{n} {s}" for s, n in by_status.items()) or "none"

    typer.echo(f"database  {summary['database']} (schema {summary['schema_version']})")
    typer.echo(f"model     {summary['active_model'] or 'none active'}")
    grouping = "" if by == "material" else f" (by {by})"
    typer.echo(f"frames    {summary['total']}: {counts(summary['by_status'])}{grouping}")
    for group, by_status in summary[f"by_{by}"].items():
        typer.echo(f"  {group:8}{' ' if len(group) >= 8 else ''}{counts(by_status)}")
    last = summary["last_frame"]
    if last is not None:
        detail = f"{last['n_particles']} particles" if last["status"] == "done" else last["error"]
        latency = "" if last["latency_ms"] is None else f", {last['latency_ms']:.0f} ms"
        typer.echo(f"last      {last['processed_at']}  {last['source_path']}")
        typer.echo(f"          {last['status']} ({last['material'] or '?'}): {detail}{latency}")
    mean = summary["mean_latency_ms"]
    typer.echo(
        f"last {minutes:g} min  {summary['window_frames']} frames, "
        f"{summary['frames_per_minute']:.2f} frames/min, mean latency "
        + ("-" if mean is None else f"{mean:.0f} ms")
    )


@app.command()
def reprocess(
    paths: list[str] = typer.Argument(..., help="Frame files and folders of the archive."),
    db: str | None = typer.Option(None, "--db", help="Database URL or file (default: settings)."),
    model: str = typer.Option(
        "auto", "--model", help="ID | DIR | active | bundled (default: active, else bundled)."
    ),
    material: str | None = typer.Option(
        None, "--material", help="Material when neither metadata nor folder rules say."
    ),
    scheduler: str = typer.Option(
        "local", "--scheduler", help="local, or tcp://HOST:PORT of a running Dask scheduler."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Workers of the local cluster."),
    instrument: str | None = typer.Option(
        None, "--instrument", help="Microscope name to record (default: settings)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=0, help="CPU threads per worker (0: cores / workers)."
    ),
    config: str | None = typer.Option(None, "--config", help="Settings file (TOML)."),
) -> None:
    """Segment an archive with a model on Dask; each frame's result is recorded once per
    model, so a rerun (also after Ctrl-C) does only what is left."""
    from sqlalchemy.exc import OperationalError

    from temseg.config import ConfigError, load_settings
    from temseg.reprocess import ReprocessError, Summary
    from temseg.reprocess import reprocess as run
    from temseg.store import SchemaError, connect

    try:
        settings = load_settings(
            config,
            overrides={
                "db": db,
                "material": material,
                "instrument": instrument,
                "threads": threads,
            },
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        engine = connect(settings.db)
    except (FileNotFoundError, SchemaError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except OperationalError as exc:
        typer.echo(f"error: {settings.db}: {_first_line(exc.orig)}", err=True)
        raise typer.Exit(1) from exc
    bar: Any = None

    def progress(summary: Summary) -> None:
        nonlocal bar
        if bar is None:
            bar = typer.progressbar(length=summary.found, label="reprocess", file=sys.stderr)
            bar.__enter__()
        bar.update(summary.handled - bar.pos)

    try:
        summary = run(
            paths,
            engine,
            model=model,
            settings=settings,
            scheduler=scheduler,
            workers=workers,
            instrument=settings.instrument,
            progress=progress,
        )
    except ReprocessError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except OperationalError as exc:
        typer.echo(f"error: {settings.db}: {_first_line(exc.orig)}", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        typer.echo("interrupted before reprocessing started; nothing recorded", err=True)
        raise typer.Exit(130) from None
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
        engine.dispose()
    for error in summary.errors[:10]:
        typer.echo(f"  {error}", err=True)
    if len(summary.errors) > 10:
        typer.echo(f"  ... and {len(summary.errors) - 10} more", err=True)
    typer.echo(
        f"model {summary.model_id}: {summary.found} frames found, {summary.done} done, "
        f"{summary.failed} failed, {summary.skipped} already recorded, {summary.repeats} "
        f"repeated content, {summary.unreadable} unreadable; {summary.segmented} segmented "
        f"in {summary.segment_s:.1f} s ({summary.frames_per_s:.2f} frames/s) on "
        f"{summary.workers} worker(s), {summary.elapsed_s:.1f} s in all"
    )
    if summary.interrupted:
        typer.echo("interrupted: what was recorded stays; run the same command to resume", err=True)
        raise typer.Exit(130)


def _open_db(url: str, *, create: bool = False) -> Any:
    """The database at ``url``; a missing, unusable or unreachable one is one error line."""
    from sqlalchemy.exc import OperationalError

    from temseg.store import DatabaseError, SchemaError, connect

    try:
        return connect(url, create=create)
    except FileNotFoundError as exc:
        typer.echo(f"error: no database: {exc}", err=True)
        raise typer.Exit(1) from exc
    except (SchemaError, DatabaseError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except OperationalError as exc:
        typer.echo(f"error: {url}: {_first_line(exc.orig)}", err=True)
        raise typer.Exit(1) from exc


def _first_line(error: object) -> str:
    """A driver's error message, first line only (PostgreSQL's run over several)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


keys_app = typer.Typer(help="CURVE keys for an encrypted, authenticated mask stream.")
app.add_typer(keys_app, name="keys", no_args_is_help=True)


@keys_app.command("generate")
def keys_generate(
    out: str = typer.Option(..., "--out", help="Key folder (created; existing keys are kept)."),
    client: list[str] = typer.Option(
        ["client"], "--client", help="Client name to make a key pair for; repeatable."
    ),
) -> None:
    """Write a server key pair and one key pair per client, and say where each goes."""
    from pathlib import Path

    from temseg.stream.keys import generate_keys

    try:
        keys = generate_keys(Path(out), client)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"server keys   {keys.server_public} (public), {keys.server_secret} (secret)")
    typer.echo(f"authorized    {keys.authorized}/ (public keys allowed to subscribe)")
    typer.echo("")
    typer.echo("On the publishing machine keep the whole folder and set in temseg.toml:")
    typer.echo(f'    curve_keys = "{Path(out).resolve()}"')
    typer.echo("(restart the daemon after adding or removing files in authorized/).")
    typer.echo("")
    for name, secret in keys.client_secrets.items():
        typer.echo(f"Give client {name!r}: {keys.server_public} and {secret} (keep it secret);")
        typer.echo(
            f"    temseg subscribe --connect tcp://HOST:PORT "
            f"--curve-server-key server.key --curve-client-key {secret.name}"
        )


@app.command()
def train(
    extra_data: list[str] = typer.Argument(
        None, metavar="[DIR...]", help="More data folders (after --data)."
    ),
    data: list[str] = typer.Option(
        None, "--data", help="Folder of NAME.tif + NAME_mask.tif (+ NAME.json); repeatable."
    ),
    pairs: list[str] = typer.Option(
        None, "--pairs", help="CSV file of image,mask rows (TIFF, PNG or JPEG); repeatable."
    ),
    out: str = typer.Option(..., "--out", help="Output model bundle folder."),
    material: str | None = typer.Option(
        None, "--material", help="Material of frames whose metadata names none."
    ),
    materials: str | None = typer.Option(
        None, "--materials", help="Comma-separated materials to train on (default: all)."
    ),
    preset: str = typer.Option(
        "groschner2021",
        "--preset",
        help="groschner2021 | wide | pynanofind | hrtem-generalization.",
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, help="Default: 50, or 12 when fine-tuning (--init)."
    ),
    patch: int = typer.Option(
        256, "--patch", help="Largest training patch (pixels); shrinks to fit small frames."
    ),
    batch: int = typer.Option(8, "--batch", min=1),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    val_fraction: float = typer.Option(0.2, "--val-fraction"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Model to fine-tune: bundled | active | a registered model id | a bundle folder.",
    ),
    db: str | None = typer.Option(None, "--db", help="Register the model in this database."),
    hdf5: tuple[str, str] | None = typer.Option(
        None, "--hdf5", help="IMAGES.h5 MAPS.h5 in the layout of Groschner et al. (2021)."
    ),
    workers: int = typer.Option(0, "--workers", min=0, help="Data loader processes."),
    patience: int = typer.Option(
        10,
        "--patience",
        help="Stop after this many epochs without a better validation Dice (0: off).",
    ),
    steps_per_epoch: int | None = typer.Option(
        None, "--steps-per-epoch", min=1, help="Cap on optimiser steps per epoch."
    ),
    max_minutes: float | None = typer.Option(
        None,
        "--max-minutes",
        min=0.0,
        help="Time budget: no epoch is started that would end past it (default: none, or 4.5 "
        "when fine-tuning).",
    ),
    freeze_bn: bool | None = typer.Option(
        None,
        "--freeze-bn/--train-bn",
        help="Keep batch-norm statistics fixed (default: when fine-tuning with --init).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a U-Net on labelled frames, or fine-tune one (--init), and write a model bundle.

    The model kept is the one of highest validation Dice; a fine-tune that
    does not beat its starting model keeps the starting weights and says so.
    Several processes: torchrun --nproc-per-node N --no-python temseg train ...
    """
    import os
    from pathlib import Path

    from temseg.model.bundle import BundleError
    from temseg.store import DatabaseError
    from temseg.trainer.data import DataError
    from temseg.trainer.loop import TrainConfig
    from temseg.trainer.loop import train as run_training
    from temseg.trainer.progress import TrainProgress, summary_lines

    rank0 = int(os.environ.get("RANK", "0")) == 0
    if epochs is None:
        epochs = FINE_TUNE_EPOCHS if init is not None else 50
    if max_minutes is None and init is not None:
        max_minutes = FINE_TUNE_MINUTES
    progress = TrainProgress(epochs, enabled=rank0 and not quiet)
    folders = [Path(d) for d in [*(data or []), *(extra_data or [])]]
    config = TrainConfig(
        data=folders,
        pairs=[Path(p) for p in pairs or []],
        out=Path(out),
        material=material,
        materials=[m.strip() for m in materials.split(",") if m.strip()] if materials else None,
        preset=preset,
        epochs=epochs,
        patch=patch,
        batch=batch,
        lr=lr,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        init=init,
        db=db,
        registry=_models_db(db) if init not in (None, "bundled") else None,
        hdf5=None if hdf5 is None else (Path(hdf5[0]), Path(hdf5[1])),
        workers=workers,
        patience=patience,
        steps_per_epoch=steps_per_epoch,
        max_minutes=max_minutes,
        freeze_batch_norm=freeze_bn,
        on_epoch=progress.epoch,
        on_batch=progress.batch,
        on_note=lambda text: typer.echo(f"note: {text}", err=True),
    )
    try:
        with progress:
            result = run_training(config)
    except (DataError, BundleError, DatabaseError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if rank0:
        for line in summary_lines(result, epochs):
            typer.echo(line)


FINE_TUNE_EPOCHS = 12  # reaches its plateau on 10-16 real training frames (RESULTS.md)
FINE_TUNE_MINUTES = 4.5  # leaves the final validation and the ONNX export inside 5 minutes

models_app = typer.Typer(help="Registered model bundles: list them, make one active.")
app.add_typer(models_app, name="models", no_args_is_help=True)


def _models_db(db: str | None) -> str:
    from temseg.config import load_settings

    return load_settings(overrides={"db": db}).db


@models_app.command("list")
def models_list(
    db: str | None = typer.Option(None, "--db", help="Database URL (default: settings)."),
) -> None:
    """Show registered models: id, name, created, active, per-material Dice.

    The model shipped with temseg is always listed (registered on first use).
    """
    from temseg.daemon.models import register_bundled
    from temseg.store import list_models

    engine = _open_db(_models_db(db))
    register_bundled(engine)
    records = list_models(engine)
    engine.dispose()
    if not records:
        typer.echo("no registered models")
        return
    typer.echo(f"{'':1} {'id':16}  {'name':20}  {'created (UTC)':19}  Dice per material")
    for r in records:
        metrics = r.metadata.get("metrics", {})
        dice = ", ".join(
            f"{m} {v.get('dice', float('nan')):.3f}" for m, v in sorted(metrics.items())
        )
        typer.echo(
            f"{'*' if r.active else ' '} {r.model_id:16}  {r.name[:20]:20}  "
            f"{r.created_at:%Y-%m-%d %H:%M:%S}  {dice or '-'}"
        )


@models_app.command("promote")
def models_promote(
    model_id: str = typer.Argument(..., help="Id of a registered model."),
    db: str | None = typer.Option(None, "--db", help="Database URL (default: settings)."),
) -> None:
    """Make a registered model the active one (its bundle must still load).

    The model shipped with temseg is registered too, so it can be promoted back.
    """
    from temseg.daemon.models import register_bundled
    from temseg.model.bundle import BundleError, load_bundle
    from temseg.store import active_model, list_models, promote_model

    engine = _open_db(_models_db(db))
    try:
        register_bundled(engine)
        records = {r.model_id: r for r in list_models(engine)}
        current = active_model(engine)
        keeping = f"active model stays {current.model_id if current else 'none'}"
        if model_id not in records:
            known = ", ".join(records) or "none"
            typer.echo(f"error: no registered model {model_id!r} (registered: {known})", err=True)
            raise typer.Exit(1)
        try:
            load_bundle(records[model_id].path)
        except BundleError as exc:
            typer.echo(
                f"error: model {model_id} cannot be promoted, its bundle no longer loads: {exc}; "
                f"{keeping}",
                err=True,
            )
            raise typer.Exit(1) from exc
        promote_model(engine, model_id)
    finally:
        engine.dispose()
    typer.echo(f"model {model_id} ({records[model_id].name}) is now active")


@models_app.command("import")
def models_import(
    file: str = typer.Argument(..., help="A published network file (only read)."),
    fmt: str = typer.Option(
        ..., "--format", help="pynanofind (Keras .h5 weights) | hrtem-generalization (torch.save)."
    ),
    out: str = typer.Option(..., "--out", help="Folder for the new bundle."),
    db: str | None = typer.Option(None, "--db", help="Register the bundle in this database."),
    name: str | None = typer.Option(None, "--name", help="Model name (default: the file's stem)."),
    pixel_nm: float | None = typer.Option(
        None, "--pixel-nm", help="Training pixel size, nm per pixel (default: from the file name)."
    ),
    materials: list[str] = typer.Option(
        None, "--material", help="Training material, repeatable (default: from the file name)."
    ),
) -> None:
    """Write a published network as a temseg bundle (safetensors + JSON + ONNX); print its id.

    No pickled code is run: PyTorch files are read through an allow-list of
    tensor and layer types, anything else is refused. See docs/models.md.
    """
    from temseg.model.zoo import FORMATS, ImportFailed, import_model

    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose from {', '.join(FORMATS)}", param_hint="--format")
    if pixel_nm is not None and pixel_nm <= 0:
        raise typer.BadParameter("must be positive (nm per pixel)", param_hint="--pixel-nm")
    try:
        bundle = import_model(
            file,
            fmt,
            out,
            name=name,
            pixel_nm=pixel_nm,
            materials=list(materials) if materials else None,
        )
    except ImportFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if db is not None:
        from sqlalchemy.exc import SQLAlchemyError

        from temseg.store import DatabaseError
        from temseg.trainer.export import register_bundle

        try:
            register_bundle(db, bundle)
        except DatabaseError as exc:  # says where the bundle is, and why
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        except (SQLAlchemyError, OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0]
            typer.echo(
                f"error: bundle {bundle.path} written but not registered: {reason}", err=True
            )
            raise typer.Exit(1) from exc
    typer.echo(bundle.model_id)


@app.command()
def calibrate(
    extra_data: list[str] = typer.Argument(
        None, metavar="[DIR...]", help="More data folders (after --data)."
    ),
    material: str = typer.Option(
        ...,
        "--material",
        help="Material to calibrate, e.g. CdSe; frames without material metadata count as it.",
    ),
    data: list[str] = typer.Option(
        None, "--data", help="Folder of NAME.tif + NAME_mask.tif (+ NAME.json); repeatable."
    ),
    pairs: list[str] = typer.Option(
        None, "--pairs", help="CSV file of image,mask rows (TIFF, PNG or JPEG); repeatable."
    ),
    model: str = typer.Option(
        "active",
        "--model",
        help="Bundle folder, 'bundled', a registered id, or 'active' (database's, else bundled).",
    ),
    db: str | None = typer.Option(None, "--db", help="Record the calibration in this database."),
    out: str = typer.Option(".", "--out", help="Folder for calibration_<material>.png."),
    criterion: str = typer.Option(
        "f1", "--criterion", help="f1 | precision-recall-crossover | min-precision=P."
    ),
    backend: str = typer.Option("auto", "--backend", help="auto | torch | onnxruntime | tensorrt."),
) -> None:
    """Choose a material's probability threshold from labelled frames (precision/recall sweep)."""
    from temseg.calibrate.run import CalibrationError, curve_table
    from temseg.calibrate.run import calibrate as run_calibration
    from temseg.engine import EngineError
    from temseg.model.bundle import BundleError
    from temseg.store import DatabaseError

    folders = [*(data or []), *(extra_data or [])]
    if not folders and not pairs:
        typer.echo("error: give at least one --data folder or --pairs file", err=True)
        raise typer.Exit(1)
    try:
        result = run_calibration(
            material,
            folders,
            pairs=pairs or [],
            model=model,
            db=db,
            out=out,
            criterion=criterion,
            backend=backend,
            on_warning=lambda text: typer.echo(f"warning: {text}", err=True),
        )
    except (CalibrationError, BundleError, DatabaseError, EngineError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    c = result.choice
    typer.echo(f"{material}: {result.curves.n_images} frames, model {result.model_id}")
    typer.echo(curve_table(result.curves))
    typer.echo(
        f"chosen threshold {c.threshold:.4g} ({c.criterion}): precision {c.precision:.3f}  "
        f"recall {c.recall:.3f}  F1 {c.f1:.3f}"
    )
    typer.echo(f"plot: {result.plot_path}")
    if result.calibration_id is not None:
        typer.echo(f"recorded as calibration {result.calibration_id} in {db}")


@app.command("compile")
def compile_engine(
    model: str | None = typer.Option(
        None,
        "--model",
        help="Model bundle folder (default: settings, else the database's active model, "
        "else the bundled model).",
    ),
    db: str | None = typer.Option(None, "--db", help="Database URL (default: settings)."),
    max_size: int = typer.Option(
        4096, "--max-size", min=16, help="Largest frame side in pixels the engine accepts."
    ),
    batch: int = typer.Option(4, "--batch", min=1, help="Largest batch (frames) it accepts."),
    precision: str = typer.Option("fp16", "--precision", help="fp16 | fp32."),
    cache: str | None = typer.Option(
        None, "--cache", help="Engine cache folder (default: settings, else the user cache)."
    ),
    device: str = typer.Option("cuda", "--device", help="cuda | cuda:N."),
) -> None:
    """Build the TensorRT engine ahead of time so the daemon starts without waiting."""
    import time

    from temseg.config import ConfigError, load_settings
    from temseg.engine import EngineError
    from temseg.engine.tensorrt_engine import build_engine, import_tensorrt
    from temseg.model.bundle import BundleError, load_bundle
    from temseg.store import SchemaError, active_model, connect

    try:
        import_tensorrt()
    except EngineError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        settings = load_settings(overrides={"model": model, "engine_cache": cache, "db": db})
        path = settings.model
        if path is None:
            try:
                store = connect(settings.db, create=False)
            except FileNotFoundError:
                pass  # no database yet: the bundled model serves
            else:
                record = active_model(store)
                store.dispose()
                path = None if record is None else record.path
        bundle = load_bundle(path)
        start = time.perf_counter()
        plan, built = build_engine(
            bundle,
            device=device,
            max_size=max_size,
            batch=batch,
            precision=precision,
            cache_dir=settings.engine_cache,
        )
    except (ConfigError, BundleError, EngineError, SchemaError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    how = f"built in {time.perf_counter() - start:.0f} s" if built else "already in the cache"
    limits = f"{precision}, up to {batch} x {max_size} px"
    typer.echo(f"{plan} ({how}; model {bundle.model_id}, {limits})")


@app.command()
def bench(
    size: int = typer.Option(
        512, "--size", min=16, help="Frame side in pixels, e.g. 512, 1024, 2048, 4096."
    ),
    frames: int = typer.Option(20, "--frames", "-n", min=1, help="Synthetic frames per stage."),
    backend: str = typer.Option("auto", "--backend", help="auto | torch | onnxruntime | tensorrt."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0: all cores)."),
    model: str | None = typer.Option(
        None, "--model", help="Model bundle folder (default: the bundled model)."
    ),
    paced: int | None = typer.Option(
        None, "--paced", min=0, help="Frames sent one at a time after the burst (default 10)."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="The daemon's batch size (default: its setting, 4)."
    ),
    compile_: bool = typer.Option(
        False, "--compile", help="torch.compile the CUDA engine (stage a and the daemon)."
    ),
    segmenter_processes: bool = typer.Option(
        False,
        "--segmenter-processes",
        help="The daemon measures particles in worker processes (its setting of that name).",
    ),
    metrics: bool = typer.Option(
        True, "--metrics/--no-metrics", help="The daemon serves its Prometheus metrics or not."
    ),
    json_out: str | None = typer.Option(None, "--json", help="Write every figure to this file."),
    workdir: str | None = typer.Option(
        None, "--workdir", help="Keep frames, watched folder and database here (default: temp)."
    ),
) -> None:
    """Throughput and latency from the bare engine to the daemon through ZeroMQ.

    Writes synthetic uint16 TIFF frames to a temporary folder, then measures
    (a) the bare engine on preloaded arrays, (b) TIFF decode, (c) a naive
    tifffile + PyTorch loop and (d) the daemon end to end (a burst of all
    frames, then frames one at a time), and checks the performance targets.
    """
    import json
    from pathlib import Path

    from temseg.bench import BenchError, format_report, run_bench
    from temseg.config import ConfigError
    from temseg.engine import EngineError
    from temseg.model.bundle import BundleError

    try:
        report = run_bench(
            size,
            frames,
            backend=backend,
            device=device,
            threads=threads,
            model=model,
            paced=paced,
            batch_size=batch_size,
            compile=compile_,
            segmenter_processes=segmenter_processes,
            metrics=metrics,
            workdir=workdir,
            on_status=lambda text: typer.echo(f"bench: {text}", err=True),
        )
    except (BenchError, BundleError, ConfigError, EngineError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(format_report(report))
    if json_out is not None:
        try:
            Path(json_out).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        except OSError as exc:
            typer.echo(f"error: cannot write {json_out}: {exc}", err=True)
            raise typer.Exit(1) from exc
