"""The stage list: :func:`build_stages` is the one place the daemon's stages are named.

A new per-frame stage is a module with a callable taking a
:class:`~temseg.daemon.work.FrameWork`, and one line here; the threads that run
the list are :class:`~temseg.daemon.pipeline.Pipeline`'s (``docs/daemon.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from temseg.config import Settings
from temseg.daemon.database import Database
from temseg.daemon.faults import FaultPoints
from temseg.daemon.infer import InferStage
from temseg.daemon.lifecycle import subscribers_within_file_limit
from temseg.daemon.masks import MaskSink
from temseg.daemon.models import ModelServer
from temseg.daemon.observers import DaemonStats
from temseg.daemon.prepare import PrepareStage
from temseg.daemon.preview import PreviewStage
from temseg.daemon.publish import PublishSink
from temseg.daemon.read import ReadLimits, ReadStage
from temseg.daemon.read_buffers import ReadBuffers
from temseg.daemon.record import RecordSink
from temseg.daemon.segment import SegmentStage
from temseg.daemon.work import Sink, Stage
from temseg.segment import Measure


@dataclass
class Stages:
    """The per-frame stages by the threads that run them."""

    # readers, files in parallel, then queued in acceptance order; the first reads the
    # file, the others run for each of its 2-D frames
    read: list[Stage]
    infer: InferStage  # the inference thread, frames that arrived together batched
    segment: list[Stage]  # segmenters, frames in parallel
    sinks: list[Sink]  # the recorder, one frame at a time in arrival order


def build_stages(
    settings: Settings,
    *,
    db: Database,
    models: ModelServer,
    measure: Measure,
    tile: int,
    give_up: Callable[[], bool],
    on_model_swap: Callable[[], None],
    faults: FaultPoints,
    stats: DaemonStats,
    read_again: Callable[[Path], object] | None = None,
    root: Path,
    check_db: Callable[[], None] | None = None,
    read_buffers: int = 1,
) -> Stages:
    """The stages for ``settings``: the one place where they are listed.

    ``root`` is the watched folder (resolved); ``check_db()`` raises when the
    database file is no longer the one opened (see :mod:`temseg.daemon.db_guard`);
    ``read_buffers`` is how many buffers the readers keep (:mod:`temseg.daemon.read_buffers`).
    """
    s = settings
    limits = ReadLimits(
        root=root,
        max_file_bytes=s.max_file_bytes,
        read_timeout_s=s.read_timeout_s,
        follow_symlinks=s.follow_symlinks,
        max_pixels=s.max_pixels,
        max_decoded_bytes=s.max_decoded_bytes,
    )
    publish = PublishSink(
        s.publish,
        send_hwm=s.send_hwm,
        max_peers=subscribers_within_file_limit(s.max_subscribers),
        encoding=s.mask_encoding,
        send_probability=s.send_probability,
        curve_keys=s.curve_keys,
        faults=faults,
    )
    return Stages(
        read=[
            ReadStage(
                db,
                give_up,
                s.folder_rules,
                s.material,
                limits,
                read_again=read_again,
                stable_s=s.stable_s,
                buffers=ReadBuffers(read_buffers),
            ),
            PrepareStage(
                lambda: models.current,
                masks_on_device=not s.send_probability,
                tile=tile,
                max_pixels=s.max_pixels,
            ),
        ],
        infer=InferStage(
            models,
            batch_size=s.batch_size,
            masks_on_device=not s.send_probability,
            tile=tile,
            overlap=s.tile_overlap,
            give_up=give_up,
            on_swap=on_model_swap,
            stats=stats,
            max_pixels=s.max_pixels,
        ),
        segment=[
            SegmentStage(
                measure,
                send_probability=s.send_probability,
                encoding=s.mask_encoding,
                min_particle_nm=s.min_particle_nm,
            ),
            *([MaskSink(Path(s.masks))] if s.masks is not None else []),
            *([PreviewStage(s.send_preview_px)] if s.send_preview_px > 0 else []),
        ],
        sinks=[
            RecordSink(db, publish.next_seq, give_up, faults, check_db, instrument=s.instrument),
            publish,
        ],
    )
