"""Training augmentation of (image, mask) pairs.

Geometric (Groschner et al. 2021): rotation by any angle, flips and
90-degree rotations, applied identically to image and mask
(linear interpolation for the image, nearest neighbour for the mask).
Photometric, image only: intensity scale and offset, Gaussian or Poisson
noise and a defocus-like Gaussian blur. Images are normalised float32 (about
0..1), masks uint8 0/1; every function returns new arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (sizes in pixels)."""

    p_rotate: float = 0.5
    p_intensity: float = 0.8
    scale_range: tuple[float, float] = (0.8, 1.2)
    offset_range: tuple[float, float] = (-0.1, 0.1)
    p_noise: float = 0.5
    gaussian_sigma_range: tuple[float, float] = (0.0, 0.05)
    poisson_counts_range: tuple[float, float] = (20.0, 500.0)  # counts at intensity 1
    p_blur: float = 0.3
    blur_sigma_range: tuple[float, float] = (0.3, 1.5)


def rotate_pair(image: np.ndarray, mask: np.ndarray, angle_deg: float) -> tuple[np.ndarray, ...]:
    """Rotate about the centre by ``angle_deg`` degrees, same shape, wrap-around fill.

    :func:`augment_patch` only keeps the centre, which the fill never reaches.
    """
    rotated = ndimage.rotate(image, angle_deg, reshape=False, order=1, mode="grid-wrap")
    rotated_mask = ndimage.rotate(mask, angle_deg, reshape=False, order=0, mode="grid-wrap")
    return rotated.astype(np.float32, copy=False), rotated_mask.astype(np.uint8, copy=False)


def flip_rot90(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random element of the 8 symmetries of the square, applied to both arrays."""
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def random_window(
    image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` x ``size`` window; a frame smaller than that is an error."""
    h, w = image.shape
    if size > min(h, w):
        raise ValueError(f"window of {size} px does not fit a {w} x {h} px frame")
    y = int(rng.integers(h - size + 1))
    x = int(rng.integers(w - size + 1))
    return image[y : y + size, x : x + size], mask[y : y + size, x : x + size]


def jitter_intensity(
    image: np.ndarray, rng: np.random.Generator, config: AugmentConfig
) -> np.ndarray:
    """``image * scale + offset`` with scale and offset drawn from the config ranges."""
    scale = rng.uniform(*config.scale_range)
    offset = rng.uniform(*config.offset_range)
    return (image * scale + offset).astype(np.float32)


def add_noise(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Gaussian noise or Poisson (shot) noise, chosen with equal odds."""
    if rng.random() < 0.5:
        sigma = rng.uniform(*config.gaussian_sigma_range)
        return (image + rng.normal(0.0, sigma, image.shape)).astype(np.float32)
    low, high = config.poisson_counts_range
    counts = math.exp(rng.uniform(math.log(low), math.log(high)))
    expected = np.clip(image, 0.0, None) * counts
    return (rng.poisson(expected) / counts).astype(np.float32)


def defocus_blur(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Gaussian blur with sigma (pixels) drawn from the config range."""
    sigma = rng.uniform(*config.blur_sigma_range)
    return ndimage.gaussian_filter(image, sigma, mode="wrap").astype(np.float32)


def augment_patch(
    image: np.ndarray,
    mask: np.ndarray,
    size: int,
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A randomly cropped, augmented ``size`` x ``size`` patch of a frame.

    For rotations a window of ``ceil(size * sqrt 2)`` pixels is rotated and
    its centre cropped, so no fill enters the patch; frames smaller than that
    window get only the flips and 90-degree rotations. The frame must be at
    least ``size`` pixels on each side (see :func:`temseg.trainer.loop.fit_patch`).
    """
    config = config or AugmentConfig()
    window = math.ceil(size * math.sqrt(2.0))
    rotate = rng.random() < config.p_rotate
    if rotate and window <= min(image.shape):
        image, mask = random_window(image, mask, window, rng)
        image, mask = rotate_pair(image, mask, rng.uniform(0.0, 360.0))
        start = (window - size) // 2
        image = image[start : start + size, start : start + size]
        mask = mask[start : start + size, start : start + size]
    else:
        image, mask = random_window(image, mask, size, rng)
    image, mask = flip_rot90(image, mask, rng)
    if rng.random() < config.p_blur:
        image = defocus_blur(image, rng, config)
    if rng.random() < config.p_intensity:
        image = jitter_intensity(image, rng, config)
    if rng.random() < config.p_noise:
        image = add_noise(image, rng, config)
    return image.astype(np.float32, copy=False), mask.astype(np.uint8, copy=False)
