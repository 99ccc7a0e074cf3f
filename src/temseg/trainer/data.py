"""Labelled training data: folders of ``NAME.tif`` + ``NAME_mask.tif``, CSV lists, HDF5.

A folder holds images ``NAME.tif`` (or ``.tiff``, ``.png``, ``.jpg``,
``.jpeg``), masks ``NAME_mask.tif`` (or ``.tiff``, ``.png``; same shape) and
optionally ``NAME.json`` with ``material`` and ``pixel_nm`` (nm per pixel).
Every image needs its mask and every mask its image. A pairs file is a CSV
of ``image,mask`` rows (an optional header row ``image,mask``; relative
paths from the CSV's folder). Image and mask formats are those of
:mod:`temseg.trainer.images`: grayscale, or RGB(A) with equal channels;
masks 0/1, 0/255, boolean or instance labels (nonzero = particle). The
HDF5 layout of Groschner et al. (2021) is a pair of files with datasets
``images`` (N x H x W x 1) and ``maps`` (N x H x W x 1 or 2; with two
channels the last one is the particle class); reading it needs ``h5py``.

Source files are only read, never modified.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from temseg.frames.normalise import normalise
from temseg.frames.read import FrameError
from temseg.frames.resample import model_grid_shape, resample
from temseg.trainer.augment import AugmentConfig, augment_patch
from temseg.trainer.images import IMAGE_SUFFIXES, MASK_SUFFIXES, read_image, read_mask, to_mask

MASK_TAG = "_mask"


class DataError(ValueError):
    """Training or calibration data is missing, unpaired or malformed."""


@dataclass
class LabelledFrame:
    """One frame with its ground truth. ``image`` as stored (or normalised), ``mask`` 0/1."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    material: str | None = None
    pixel_nm: float | None = None
    source: str = ""


def find_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """Sorted ``(image, mask)`` path pairs of a folder; unpaired files raise :class:`DataError`."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    masks: dict[str, Path] = {}
    images: dict[str, Path] = {}
    problems = []
    for p in files:
        is_mask = p.stem.endswith(MASK_TAG)
        stem = p.stem[: -len(MASK_TAG)] if is_mask else p.stem
        kind = masks if is_mask else images
        if is_mask and p.suffix.lower() not in MASK_SUFFIXES:
            problems.append(f"{p.name}: JPEG is lossy, save masks as PNG or TIFF")
        elif stem in kind:
            problems.append(f"{p.name}: same name as {kind[stem].name}; keep one of them")
        else:
            kind[stem] = p
    problems += [f"{images[s].name}: no mask {s}{MASK_TAG}.tif" for s in images if s not in masks]
    problems += [f"{masks[s].name}: no image {s}.tif" for s in masks if s not in images]
    if problems:
        raise DataError(f"{root}: unpaired files:\n  " + "\n  ".join(problems))
    if not images:
        raise DataError(f"{root}: no labelled frames (NAME.tif + NAME{MASK_TAG}.tif)")
    return [(images[s], masks[s]) for s in sorted(images)]


def read_pairs_file(path: str | Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` paths listed in a CSV file of ``image,mask`` rows.

    A first row ``image,mask`` is a header; relative paths are taken from the
    CSV file's folder; blank lines are skipped. A malformed row or a missing
    file raises :class:`DataError` naming the CSV line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read pairs file ({exc})") from exc
    pairs = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if number == 1 and [c.lower() for c in cells] == ["image", "mask"]:
            continue
        if len(cells) != 2 or not all(cells):
            raise DataError(f"{path} line {number}: expected two columns 'image,mask', got {row!r}")
        image, mask = (p if p.is_absolute() else path.parent / p for p in map(Path, cells))
        for name, file in (("image", image), ("mask", mask)):
            if not file.is_file():
                raise DataError(f"{path} line {number}: {name} {file} not found")
        pairs.append((image, mask))
    if not pairs:
        raise DataError(f"{path}: no image,mask rows")
    return pairs


def mask_from_array(values: np.ndarray, origin: str) -> np.ndarray:
    """A uint8 0/1 mask (nonzero = particle) from a 0/1, 0/255, boolean or label array."""
    try:
        return to_mask(values, origin)
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def read_labelled_frame(image_path: str | Path, mask_path: str | Path) -> LabelledFrame:
    """Read one frame (with sidecar metadata) and its mask; shapes must agree."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    try:
        frame = read_image(image_path)
        mask = read_mask(mask_path)
    except FrameError as exc:
        raise DataError(str(exc)) from exc
    if mask.shape != frame.image.shape:
        raise DataError(
            f"shape mismatch: {image_path} is {frame.image.shape}, {mask_path} is {mask.shape}"
        )
    return LabelledFrame(
        name=image_path.stem,
        image=frame.image,
        mask=mask,
        material=frame.material,
        pixel_nm=frame.pixel_nm,
        source=image_path.parent.name,
    )


def load_folders(
    folders: Iterable[str | Path], pairs_files: Iterable[str | Path] = ()
) -> list[LabelledFrame]:
    """All labelled frames of the given folders (folder then name order), then of the
    pairs files (in file then row order)."""
    pairs = [pair for folder in folders for pair in find_pairs(folder)]
    pairs += [pair for listing in pairs_files for pair in read_pairs_file(listing)]
    return [read_labelled_frame(i, m) for i, m in pairs]


def load_hdf5(
    images_path: str | Path, maps_path: str | Path, material: str | None = None
) -> list[LabelledFrame]:
    """Frames of the paper's HDF5 files (``images`` and ``maps`` datasets)."""
    try:
        import h5py
    except ImportError as exc:
        raise DataError(
            "reading HDF5 training data needs h5py: pip install 'temseg[hdf5]'"
        ) from exc
    frames = []
    with h5py.File(images_path, "r") as fi, h5py.File(maps_path, "r") as fm:
        for key, fh, path in (("images", fi, images_path), ("maps", fm, maps_path)):
            if key not in fh:
                raise DataError(f"{path}: no dataset {key!r} (found: {', '.join(fh.keys())})")
        images, maps = fi["images"], fm["maps"]
        if images.ndim != 4 or images.shape[-1] != 1:
            raise DataError(f"{images_path}: images must be N x H x W x 1, got {images.shape}")
        if maps.ndim != 4 or maps.shape[-1] not in (1, 2) or maps.shape[:3] != images.shape[:3]:
            raise DataError(
                f"{maps_path}: maps must be N x H x W x 1 or 2 matching images {images.shape}, "
                f"got {maps.shape}"
            )
        for i in range(images.shape[0]):
            particle = np.asarray(maps[i])
            labels = particle.argmax(axis=-1) if particle.shape[-1] == 2 else particle[..., 0]
            frames.append(
                LabelledFrame(
                    name=f"{Path(images_path).stem}[{i}]",
                    image=np.asarray(images[i, ..., 0]),
                    mask=mask_from_array(labels, f"{maps_path}[{i}]"),
                    material=material,
                    source=Path(images_path).name,
                )
            )
    return frames


def select_materials(
    frames: Sequence[LabelledFrame], materials: Sequence[str] | None
) -> list[LabelledFrame]:
    """Frames whose material is one of ``materials`` (all frames when None)."""
    if not materials:
        return list(frames)
    kept = [f for f in frames if f.material in materials]
    if not kept:
        found = sorted({str(f.material) for f in frames})
        raise DataError(
            f"no labelled frames of {', '.join(materials)}; materials found: {', '.join(found)}"
        )
    return kept


def split_frames(
    frames: Sequence[LabelledFrame], val_fraction: float, seed: int
) -> tuple[list[LabelledFrame], list[LabelledFrame]]:
    """Random train/validation split, stratified by material.

    Each material with two or more frames gets at least one validation frame
    and keeps at least one training frame; with five frames or more in all,
    at least two are validation frames, so that model selection does not
    hang on a single frame.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(frames) < 2:
        raise DataError(f"need at least 2 labelled frames to train, got {len(frames)}")
    rng = np.random.default_rng(seed)
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, frame in enumerate(frames):
        groups[frame.material].append(i)
    val_idx: set[int] = set()
    for material in sorted(groups, key=str):
        members = groups[material]
        n_val = round(val_fraction * len(members))
        n_val = min(max(n_val, 1 if len(members) >= 2 else 0), len(members) - 1)
        val_idx.update(rng.permutation(members)[:n_val].tolist())
    wanted = 2 if len(frames) >= 5 else 1
    spare = [i for i in rng.permutation(len(frames)).tolist() if i not in val_idx]
    while len(val_idx) < wanted:
        val_idx.add(spare.pop())
    train = [f for i, f in enumerate(frames) if i not in val_idx]
    val = [f for i, f in enumerate(frames) if i in val_idx]
    return train, val


def to_model_grid(
    frames: Iterable[LabelledFrame], method: str, model_pixel_nm: float | None
) -> list[LabelledFrame]:
    """Copies of ``frames`` as the network sees them at inference.

    Images are normalised by ``method`` (float32); when both the frame's and
    the model's pixel sizes (nm per pixel) are known, image and mask are
    resampled onto the model's grid (linear and nearest neighbour).
    """
    prepared = []
    for f in frames:
        image, mask = normalise(f.image, method), f.mask
        grid = model_grid_shape(image.shape, f.pixel_nm, model_pixel_nm)
        if grid != image.shape:
            image, mask = resample(image, grid, order=1), resample(mask, grid, order=0)
        prepared.append(LabelledFrame(f.name, image, mask, f.material, f.pixel_nm, f.source))
    return prepared


class PatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random augmented ``patch`` x ``patch`` crops of normalised frames.

    Each frame is visited about ``area / patch**2`` times per epoch (at least
    once). The randomness of item ``i`` is seeded by (seed, epoch, i), so an
    epoch is reproducible with any number of loader workers; call
    :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        frames: Sequence[LabelledFrame],
        patch: int,
        seed: int = 0,
        augment: AugmentConfig | None = None,
    ) -> None:
        self.frames = list(frames)
        self.patch = patch
        self.seed = seed
        self.augment = augment or AugmentConfig()
        self.epoch = 0
        visits = [max(1, round(f.image.size / patch**2)) for f in self.frames]
        self.index = [i for i, n in enumerate(visits) for _ in range(n)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        frame = self.frames[self.index[i]]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        image, mask = augment_patch(frame.image, frame.mask, self.patch, rng, self.augment)
        return torch.from_numpy(image)[None], torch.from_numpy(mask.astype(np.int64))
