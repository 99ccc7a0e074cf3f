"""Electron wavelength, interaction constant and the objective-lens transfer.

Units: accelerating voltage in kV, lengths in nm, spherical aberration
``Cs`` in mm, angles in mrad, spatial frequency ``q = 1/d`` in 1/nm.

Aberration function (negative defocus = underfocus):

    chi(q) = pi lambda df q^2 + (pi/2) Cs lambda^3 q^4

Partial coherence enters as quasi-coherent envelopes on the wave (Kirkland,
*Advanced Computing in Electron Microscopy*, ch. 3):

    temporal  E_t(q) = exp(-(pi lambda Delta)^2 q^4 / 2),    Delta: focal spread
    spatial   E_s(q) = exp(-(pi alpha / lambda)^2 (df lambda q + Cs lambda^3 q^3)^2)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import fft

ELECTRON_REST_ENERGY_KEV = 510.99895
HC_KEV_NM = 1.239841984


def electron_wavelength_nm(voltage_kv: float) -> float:
    """Relativistic electron wavelength (nm); 300 kV -> 1.9687e-3 nm."""
    if voltage_kv <= 0:
        raise ValueError(f"voltage must be positive, got {voltage_kv} kV")
    e = float(voltage_kv)
    return HC_KEV_NM / np.sqrt(e * (2.0 * ELECTRON_REST_ENERGY_KEV + e))


def interaction_constant(voltage_kv: float) -> float:
    """Relativistic interaction constant sigma in rad / (V A); 300 kV -> 6.53e-4."""
    wavelength_a = 10.0 * electron_wavelength_nm(voltage_kv)
    e = float(voltage_kv)
    gamma_ratio = (ELECTRON_REST_ENERGY_KEV + e) / (2.0 * ELECTRON_REST_ENERGY_KEV + e)
    return float(2.0 * np.pi / (wavelength_a * e * 1e3) * gamma_ratio)


def scherzer_defocus_nm(cs_mm: float, voltage_kv: float) -> float:
    """Scherzer defocus (nm): ``-sign(Cs) sqrt(4/3 |Cs| lambda)``; underfocus for Cs > 0."""
    wavelength = electron_wavelength_nm(voltage_kv)
    return float(-np.sign(cs_mm) * np.sqrt(4.0 / 3.0 * abs(cs_mm) * 1e6 * wavelength))


@lru_cache(maxsize=16)
def _frequency_squared(shape: tuple[int, int], pixel_nm: float) -> np.ndarray:
    """``q^2`` (1/nm^2) on the full FFT grid."""
    qy = fft.fftfreq(shape[0], d=pixel_nm)
    qx = fft.fftfreq(shape[1], d=pixel_nm)
    q2 = (qy[:, None] ** 2 + qx[None, :] ** 2).astype(np.float32)
    q2.setflags(write=False)
    return q2


def envelope(
    q: np.ndarray,
    voltage_kv: float,
    defocus_nm: float,
    cs_mm: float,
    focal_spread_nm: float,
    convergence_mrad: float,
) -> np.ndarray:
    """Product of temporal and spatial coherence envelopes at ``q`` (1/nm)."""
    q = np.asarray(q)
    return _envelope_q2(q * q, voltage_kv, defocus_nm, cs_mm, focal_spread_nm, convergence_mrad)


def _envelope_q2(
    q2: np.ndarray,
    voltage_kv: float,
    defocus_nm: float,
    cs_mm: float,
    focal_spread_nm: float,
    convergence_mrad: float,
) -> np.ndarray:
    wavelength = electron_wavelength_nm(voltage_kv)
    cs_nm = cs_mm * 1e6
    alpha = convergence_mrad * 1e-3
    temporal = np.float32(-0.5 * (np.pi * wavelength * focal_spread_nm) ** 2) * q2 * q2
    slope = np.float32(defocus_nm * wavelength) + np.float32(cs_nm * wavelength**3) * q2
    spatial = np.float32(-((np.pi * alpha / wavelength) ** 2)) * q2 * slope * slope
    return np.exp(temporal + spatial)


def delocalization_nm(
    max_q: float,
    voltage_kv: float,
    defocus_nm: float,
    cs_mm: float,
    focal_spread_nm: float,
    convergence_mrad: float,
    cutoff: float = 0.05,
) -> float:
    """Largest image shift ``|grad chi| / 2 pi`` (nm) of a frequency <= ``max_q`` that the
    envelopes pass with amplitude above ``cutoff``: how far detail smears out of a particle."""
    q = np.linspace(0.0, max_q, 512)
    wavelength = electron_wavelength_nm(voltage_kv)
    shift = np.abs(defocus_nm * wavelength * q + cs_mm * 1e6 * wavelength**3 * q**3)
    passed = envelope(q, voltage_kv, defocus_nm, cs_mm, focal_spread_nm, convergence_mrad)
    return float(shift[passed > cutoff].max(initial=0.0))


def transfer_function(
    shape: tuple[int, int],
    pixel_nm: float,
    voltage_kv: float,
    defocus_nm: float,
    cs_mm: float,
    focal_spread_nm: float,
    convergence_mrad: float,
    aperture_mrad: float | None = None,
) -> np.ndarray:
    """Objective-lens transfer ``exp(-i chi) E_t E_s A`` on the FFT grid (complex64)."""
    wavelength = electron_wavelength_nm(voltage_kv)
    q2 = _frequency_squared((int(shape[0]), int(shape[1])), float(pixel_nm))
    cs_nm = cs_mm * 1e6
    chi = (
        np.float32(np.pi * wavelength)
        * q2
        * (np.float32(defocus_nm) + np.float32(0.5 * cs_nm * wavelength**2) * q2)
    )
    amplitude = _envelope_q2(q2, voltage_kv, defocus_nm, cs_mm, focal_spread_nm, convergence_mrad)
    if aperture_mrad is not None:
        amplitude *= q2 <= np.float32((aperture_mrad * 1e-3 / wavelength) ** 2)
    transfer = np.empty(q2.shape, dtype=np.complex64)
    transfer.real = amplitude * np.cos(chi)
    transfer.imag = -amplitude * np.sin(chi)
    return transfer


def image_intensity(phase: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """Bright-field intensity ``|IFFT(FFT(exp(i phase)) * transfer)|^2`` (vacuum = 1)."""
    phase = np.asarray(phase, dtype=np.float32)
    wave = np.empty(phase.shape, dtype=np.complex64)
    wave.real = np.cos(phase)
    wave.imag = np.sin(phase)
    spectrum = fft.fft2(wave, workers=-1, overwrite_x=True)
    spectrum *= transfer
    image_wave = fft.ifft2(spectrum, workers=-1, overwrite_x=True)
    return np.square(image_wave.real) + np.square(image_wave.imag)
