"""Camera model: electron shot noise, detector blur, gain, offset, read noise.

Scintillator-coupled camera: electrons arrive as Poisson counts with mean
``dose * (10 * pixel_nm)^2 * intensity`` (dose in e/A^2, intensity 1 in
vacuum), each electron's light spreads with a Gaussian point-spread function
(the MTF, width ``blur_px`` pixels), and the readout applies a gain (ADU per
electron), an offset (ADU) and Gaussian read noise (ADU). Output is uint16.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

UINT16_MAX = np.iinfo(np.uint16).max


def expected_counts(intensity: np.ndarray, dose_e_per_a2: float, pixel_nm: float) -> np.ndarray:
    """Mean electrons per pixel for an intensity normalised to 1 in vacuum."""
    if dose_e_per_a2 <= 0:
        raise ValueError(f"dose must be positive, got {dose_e_per_a2} e/A^2")
    return np.clip(intensity, 0.0, None) * (dose_e_per_a2 * (10.0 * pixel_nm) ** 2)


def detect(
    intensity: np.ndarray,
    rng: np.random.Generator,
    *,
    pixel_nm: float,
    dose_e_per_a2: float,
    blur_px: float,
    gain_adu_per_e: float = 1.0,
    offset_adu: float = 0.0,
    read_noise_adu: float = 0.0,
    noise: bool = True,
) -> np.ndarray:
    """Recorded uint16 frame of ``intensity``; ``noise=False`` gives the noise-free mean."""
    mean = expected_counts(intensity, dose_e_per_a2, pixel_nm)
    electrons = rng.poisson(mean).astype(np.float32) if noise else mean.astype(np.float32)
    if blur_px > 0:
        electrons = ndimage.gaussian_filter(electrons, blur_px, mode="reflect")
    signal = electrons * np.float32(gain_adu_per_e) + np.float32(offset_adu)
    if noise and read_noise_adu > 0:
        signal += np.float32(read_noise_adu) * rng.standard_normal(signal.shape, np.float32)
    return np.clip(np.rint(signal), 0, UINT16_MAX).astype(np.uint16)
