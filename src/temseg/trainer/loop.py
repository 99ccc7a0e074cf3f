"""The training loop: :func:`train` turns labelled frames into a model bundle.

Loss is cross-entropy on the two logits plus soft Dice on the particle
softmax; AdamW with cosine learning-rate decay. The model kept is the one of
highest validation Dice (threshold 0.5), the starting model included: a
fine-tune that makes the validation frames worse returns its starting
weights. Early stopping watches the same Dice. On CUDA the forward pass runs
under ``torch.autocast`` (float16) with a ``GradScaler``.

Fine-tuning keeps the batch-norm layers of the starting model in inference
mode (running statistics frozen, scale and shift still learnt): on a few real
frames, statistics of a batch of patches differ so much from those the model
was trained with that training on them wrecks the stored ones.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the same call
trains with DistributedDataParallel: gloo on the CPU, nccl on CUDA, one
``DistributedSampler`` shard per process, validation split across processes
and summed, and only rank 0 writes the bundle, the curve and the registry row.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from temseg.frames.tiling import pad_to_multiple
from temseg.model.bundle import ModelBundle
from temseg.model.resolve import resolve_bundle
from temseg.model.unet import Network, build_unet
from temseg.trainer.augment import AugmentConfig
from temseg.trainer.data import (
    DataError,
    LabelledFrame,
    PatchDataset,
    load_folders,
    load_hdf5,
    select_materials,
    split_frames,
    to_model_grid,
)
from temseg.trainer.export import (
    CURVE_NAME,
    check_database,
    plot_training_curve,
    register_bundle,
    write_bundle,
)

UNKNOWN_MATERIAL = "unknown"


@dataclass
class EpochStats:
    """One epoch: mean training loss, validation loss and Dice (threshold 0.5), seconds."""

    epoch: int
    train_loss: float
    val_loss: float
    val_dice: float
    lr: float
    seconds: float


@dataclass
class TrainConfig:
    """Everything :func:`train` needs. Sizes in pixels, ``lr`` for AdamW.

    ``pairs`` are CSV files of image,mask rows; ``hdf5`` is an (images,
    maps) file pair in the paper's layout; ``init`` the bundle to
    fine-tune: a folder, ``bundled``, ``active`` or a model id registered
    in ``registry`` (default ``db``); its architecture,
    normalisation and pixel size are kept, ``preset`` is ignored.
    ``material`` is given to frames whose metadata names none; ``materials``
    then selects frames by material. ``patch`` is the largest patch side: it
    shrinks (to a multiple of the network's size multiple) to fit the
    smallest training frame, so no frame is padded. ``freeze_batch_norm``
    keeps batch-norm statistics fixed (None: when fine-tuning).
    ``patience`` epochs without a higher validation Dice stop training (0
    disables). ``steps_per_epoch`` caps the optimiser steps per epoch;
    ``max_minutes`` is a wall-clock budget: no epoch starts that would end
    past it, judged by the last epoch's length (the best model so far is
    kept). On rank 0, ``on_epoch`` is called after each epoch (epoch 0: the
    starting model), ``on_batch(epoch, done, total)`` after each optimiser
    step and ``on_note`` with remarks (patch adapted, start kept);
    ``on_step(step, loss, model)`` after each backward pass, before the
    optimiser updates the weights.
    """

    data: Sequence[Path] = ()
    pairs: Sequence[Path] = ()
    out: Path = Path("model")
    materials: Sequence[str] | None = None
    preset: str = "groschner2021"
    epochs: int = 50
    patch: int = 512
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    init: str | Path | None = None
    db: str | None = None
    registry: str | None = None
    material: str | None = None
    freeze_batch_norm: bool | None = None
    hdf5: tuple[Path, Path] | None = None
    workers: int = 0
    patience: int = 10
    steps_per_epoch: int | None = None
    max_minutes: float | None = None
    name: str | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    on_epoch: Callable[[EpochStats], None] | None = None
    on_step: Callable[[int, float, Network], None] | None = None
    on_batch: Callable[[int, int, int], None] | None = None
    on_note: Callable[[str], None] | None = None


@dataclass
class TrainResult:
    """Outcome of :func:`train`; ``metrics`` per material on the validation frames.

    ``best_epoch`` is the epoch whose weights were kept, 0 for the starting
    model; ``initial_val_dice`` and ``final_val_dice`` are the validation
    Dice (threshold 0.5) of the starting and the kept model. ``stopped_early``
    tells whether early stopping ended training, ``out_of_time`` whether
    ``max_minutes`` did; ``patch`` is the patch side used (pixels).
    """

    bundle_path: Path
    model_id: str
    history: list[EpochStats]
    initial_val_loss: float
    best_epoch: int
    metrics: dict[str, dict[str, float]]
    seconds: float
    initial_val_dice: float = math.nan
    final_val_dice: float = math.nan
    stopped_early: bool = False
    out_of_time: bool = False
    patch: int = 0
    n_train: int = 0
    n_val: int = 0


@dataclass(frozen=True)
class _Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """Cross-entropy of (N, 2, H, W) logits plus soft Dice loss of the particle softmax.

    ``target`` is (N, H, W) int64 with 0 background, 1 particle. The Dice
    term is computed over the whole batch; ``smooth`` (pixels) keeps it
    finite for empty masks.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    particle = torch.softmax(logits, dim=1)[:, 1]
    truth = target.float()
    overlap = (particle * truth).sum()
    dice = (2.0 * overlap + smooth) / (particle.sum() + truth.sum() + smooth)
    return ce + (1.0 - dice)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA device is available")
    return torch.device(name)


def _setup_ranks(device: torch.device) -> _Ranks:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Ranks(dist.get_rank(), dist.get_world_size(), local_rank, owns)


def _load_frames(config: TrainConfig) -> list[LabelledFrame]:
    frames = load_folders(config.data, config.pairs)
    if config.hdf5 is not None:
        only = config.materials[0] if config.materials and len(config.materials) == 1 else None
        frames += load_hdf5(*config.hdf5, material=only)
    if not frames:
        raise DataError("no training data: give --data folders, --pairs files or --hdf5 files")
    if config.material is not None:
        frames = [
            f if f.material is not None else replace(f, material=config.material) for f in frames
        ]
    return select_materials(frames, config.materials)


def fit_patch(frames: Sequence[LabelledFrame], patch: int, multiple: int) -> int:
    """The largest patch side <= ``patch``, a multiple of ``multiple``, inside every frame.

    A frame smaller than ``multiple`` pixels on a side raises :class:`DataError`.
    """
    side = min(min(f.image.shape) for f in frames)
    if side < multiple:
        small = next(f for f in frames if min(f.image.shape) == side)
        raise DataError(
            f"{small.name}: {small.image.shape[1]} x {small.image.shape[0]} px is smaller than "
            f"the network's {multiple} px minimum (on the model's grid); use larger frames"
        )
    return min(patch, side // multiple * multiple)


def set_training_mode(model: torch.nn.Module, freeze_batch_norm: bool) -> None:
    """``model.train()``, with batch-norm layers left in inference mode when frozen."""
    model.train()
    if freeze_batch_norm:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _common_pixel_nm(frames: Sequence[LabelledFrame]) -> float | None:
    """The frames' pixel size (nm) when all know it and agree within 1 %, else None."""
    sizes = [f.pixel_nm for f in frames]
    if not sizes or any(s is None for s in sizes):
        return None
    known = np.array(sizes, dtype=np.float64)
    return float(np.median(known)) if known.max() <= 1.01 * known.min() else None


def _material(frame: LabelledFrame) -> str:
    return frame.material if frame.material is not None else UNKNOWN_MATERIAL


def _evaluate(
    model: Network,
    frames: Sequence[LabelledFrame],
    materials: list[str],
    device: torch.device,
    ranks: _Ranks,
) -> tuple[float, np.ndarray]:
    """Mean per-frame loss and per-material (tp, fp, fn, n_frames) at threshold 0.5.

    Whole frames (padded to the size multiple) are evaluated; with several
    processes each takes every ``world``-th frame and the sums are reduced.
    """
    totals = torch.zeros(2 + 4 * len(materials), dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for frame in frames[ranks.rank :: ranks.world]:
            padded, (h, w) = pad_to_multiple(frame.image, model.config.size_multiple)
            x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None, None]
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                logits = model(x.to(device))[..., :h, :w]
            target = torch.from_numpy(frame.mask.astype(np.int64))[None].to(device)
            totals[0] += float(segmentation_loss(logits, target))
            totals[1] += 1
            pred = (torch.softmax(logits.float(), dim=1)[:, 1] >= 0.5)[0].cpu().numpy()
            truth = frame.mask.astype(bool)
            base = 2 + 4 * materials.index(_material(frame))
            totals[base : base + 4] += torch.tensor(
                [np.sum(pred & truth), np.sum(pred & ~truth), np.sum(~pred & truth), 1],
                dtype=torch.float64,
            )
    if ranks.distributed:
        reduced = totals.to(device)
        dist.all_reduce(reduced)
        totals = reduced.cpu()
    values = totals.numpy()
    return float(values[0] / max(values[1], 1)), values[2:].reshape(len(materials), 4)


def _out_of_time(
    max_minutes: float | None,
    start: float,
    epoch_seconds: float,
    device: torch.device,
    ranks: _Ranks,
) -> bool:
    """Rank 0's verdict on the time budget, shared so that all processes stop together.

    True when another epoch as long as the last one would end past the budget.
    """
    if max_minutes is None:
        return False
    finish = time.perf_counter() - start + epoch_seconds
    late = torch.tensor([int(finish > 60.0 * max_minutes)], device=device)
    if ranks.distributed:
        dist.broadcast(late, src=0)
    return bool(late.item())


def _scores(counts: np.ndarray) -> dict[str, float]:
    tp, fp, fn, n = (float(c) for c in counts)
    return {
        "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "precision": tp / (tp + fp) if tp + fp else 1.0 if fn == 0 else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0 if fp == 0 else 0.0,
        "n_val": int(n),
    }


def train(config: TrainConfig) -> TrainResult:
    """Train (or fine-tune) a U-Net on labelled frames and write its bundle to ``config.out``."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    ranks = _setup_ranks(device)
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.backends.cudnn.benchmark = True
    try:
        result = _train(config, device, ranks, start)
        if ranks.distributed:
            dist.barrier()  # no rank tears the group down while another still uses it
        return result
    finally:
        if ranks.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, device: torch.device, ranks: _Ranks, start: float) -> TrainResult:
    if config.epochs < 1 or config.batch < 1:
        raise ValueError("epochs and batch must be at least 1")
    if config.db is not None and ranks.rank == 0:
        check_database(config.db)  # before hours of training, not after
    torch.manual_seed(config.seed)
    note = config.on_note if ranks.rank == 0 and config.on_note is not None else lambda _: None
    init = None
    if config.init is not None:
        init = resolve_bundle(config.init, config.registry or config.db)
    if init is not None:
        model, normalisation, pixel_nm = init.model, init.normalisation, init.pixel_nm
        preset = init.config.preset
    else:
        model, normalisation, preset = build_unet(config.preset), "max", config.preset
    multiple = model.config.size_multiple
    if config.patch < multiple or config.patch % multiple:
        raise ValueError(f"--patch must be a multiple of {multiple} pixels, got {config.patch}")
    freeze = init is not None if config.freeze_batch_norm is None else config.freeze_batch_norm

    frames = _load_frames(config)
    if init is None:
        pixel_nm = _common_pixel_nm(frames)
    train_frames, val_frames = split_frames(frames, config.val_fraction, config.seed)
    train_frames = to_model_grid(train_frames, normalisation, pixel_nm)
    val_frames = to_model_grid(val_frames, normalisation, pixel_nm)
    materials = sorted({_material(f) for f in frames})
    patch = fit_patch(train_frames, config.patch, multiple)
    if patch != config.patch:
        note(
            f"patch {patch} px instead of {config.patch} px: the smallest training frame is "
            f"{min(min(f.image.shape) for f in train_frames)} px on the model's grid"
        )

    dataset = PatchDataset(train_frames, patch, config.seed, config.augment)
    sampler: DistributedSampler[int] | RandomSampler
    if ranks.distributed:
        sampler = DistributedSampler(dataset, ranks.world, ranks.rank, seed=config.seed)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(config.seed))
    loader = DataLoader(
        dataset,
        batch_size=config.batch,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )
    n_batches = len(loader)
    if config.steps_per_epoch is not None:
        n_batches = min(n_batches, config.steps_per_epoch)

    model.to(device)
    net: torch.nn.Module = model
    if ranks.distributed:
        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    initial_val_loss, counts = _evaluate(model, val_frames, materials, device, ranks)
    initial_val_dice = _scores(counts.sum(axis=0))["dice"]
    if ranks.rank == 0 and config.on_epoch is not None:
        config.on_epoch(EpochStats(0, math.nan, initial_val_loss, initial_val_dice, 0.0, 0.0))
    # a fine-tune's starting model competes with its epochs, random weights do not;
    # ties in Dice (all 0 early on) go to the lower validation loss
    best = (initial_val_dice, -initial_val_loss) if init is not None else (-math.inf, 0.0)
    best_epoch = 0
    best_state = copy.deepcopy(model.state_dict())
    history: list[EpochStats] = []
    stopped_early = timed_out = False
    step = 0
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        set_training_mode(model, freeze)
        dataset.set_epoch(epoch)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        for i, (x, y) in enumerate(loader):
            if i >= n_batches:
                break
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = net(x)
            loss = segmentation_loss(logits, y)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.on_step is not None:
                config.on_step(step, loss.item(), model)
            scaler.step(optimiser)
            scaler.update()
            loss_sum[0] += loss.detach().double()
            loss_sum[1] += 1
            step += 1
            if ranks.rank == 0 and config.on_batch is not None:
                config.on_batch(epoch, i + 1, n_batches)
        lr = optimiser.param_groups[0]["lr"]
        schedule.step()
        if ranks.distributed:
            dist.all_reduce(loss_sum)
        mean_loss = float(loss_sum[0] / loss_sum[1].clamp(min=1.0))
        val_loss, counts = _evaluate(model, val_frames, materials, device, ranks)
        stats = EpochStats(
            epoch=epoch,
            train_loss=mean_loss,
            val_loss=val_loss,
            val_dice=_scores(counts.sum(axis=0))["dice"],
            lr=lr,
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(stats)
        if ranks.rank == 0 and config.on_epoch is not None:
            config.on_epoch(stats)
        if (stats.val_dice, -stats.val_loss) > best:
            best, best_epoch = (stats.val_dice, -stats.val_loss), epoch
            best_state = copy.deepcopy(model.state_dict())
        elif config.patience > 0 and epoch - best_epoch >= config.patience:
            stopped_early = epoch < config.epochs
            break
        if _out_of_time(config.max_minutes, start, stats.seconds, device, ranks):
            timed_out = epoch < config.epochs
            break

    model.load_state_dict(best_state)
    model.eval()
    if best_epoch == 0 and init is not None:
        note(
            f"no epoch beat the starting model on the {len(val_frames)} validation frames "
            f"(Dice {initial_val_dice:.3f}): its weights are kept"
        )
    _, counts = _evaluate(model, val_frames, materials, device, ranks)
    metrics = {m: _scores(c) for m, c in zip(materials, counts, strict=True) if c[3] > 0}
    final_val_dice = _scores(counts.sum(axis=0))["dice"]
    seconds = time.perf_counter() - start
    model_id = ""
    if ranks.rank == 0:
        model_id = _write_outputs(
            config,
            model.cpu(),
            history,
            metrics,
            seconds,
            frames=frames,
            n_train=len(train_frames),
            n_val=len(val_frames),
            normalisation=normalisation,
            pixel_nm=pixel_nm,
            preset=preset,
            init=init,
            device=device,
            ranks=ranks,
            best_epoch=best_epoch,
            patch=patch,
            initial_val_dice=initial_val_dice,
        )
    if ranks.distributed:
        shared = [model_id]
        dist.broadcast_object_list(shared, src=0)
        model_id = str(shared[0])
    return TrainResult(
        bundle_path=Path(config.out),
        model_id=model_id,
        history=history,
        initial_val_loss=initial_val_loss,
        best_epoch=best_epoch,
        metrics=metrics,
        seconds=seconds,
        initial_val_dice=initial_val_dice,
        final_val_dice=final_val_dice,
        stopped_early=stopped_early,
        out_of_time=timed_out,
        patch=patch,
        n_train=len(train_frames),
        n_val=len(val_frames),
    )


def _write_outputs(
    config: TrainConfig,
    model: Network,
    history: list[EpochStats],
    metrics: dict[str, dict[str, float]],
    seconds: float,
    *,
    frames: Sequence[LabelledFrame],
    n_train: int,
    n_val: int,
    normalisation: str,
    pixel_nm: float | None,
    preset: str | None,
    init: ModelBundle | None,
    device: torch.device,
    ranks: _Ranks,
    best_epoch: int,
    patch: int,
    initial_val_dice: float,
) -> str:
    out = Path(config.out)
    data_names = [Path(d).name for d in [*config.data, *config.pairs]]
    if config.hdf5 is not None:
        data_names += [Path(p).name for p in config.hdf5]
    seen = {f.material for f in frames if f.material is not None}
    if init is not None:
        seen.update(init.metadata.get("materials", []))
    metadata = {
        "name": config.name or out.resolve().name,
        "materials": sorted(seen),
        "pixel_nm": pixel_nm,
        "normalisation": {"method": normalisation},
        "default_threshold": 0.5,
        "thresholds": {},
        "metrics": metrics,
        "training": {
            "data": data_names,
            "n_train": n_train,
            "n_val": n_val,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "initial_val_dice": round(initial_val_dice, 5),
            "frozen_batch_norm": init is not None
            if config.freeze_batch_norm is None
            else config.freeze_batch_norm,
            "seed": config.seed,
            "patch": patch,
            "batch": config.batch,
            "lr": config.lr,
            "preset": preset,
            "init": None if init is None else init.model_id,
            "device": device.type,
            "world_size": ranks.world,
            "seconds": round(seconds, 1),
            "history": [
                {k: round(v, 5) if isinstance(v, float) else v for k, v in asdict(h).items()}
                for h in history
            ],
        },
    }
    bundle = write_bundle(model, metadata, out)
    plot_training_curve([asdict(h) for h in history], out / CURVE_NAME)
    if config.db is not None:
        register_bundle(config.db, bundle)
    return bundle.model_id
