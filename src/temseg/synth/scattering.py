"""Electron scattering factors and the projected potential of binned atoms.

Scattering factors use the five-Gaussian parameterisation of Peng, Ren,
Dudarev & Whelan, *Acta Cryst.* A52 (1996) 257 (International Tables for
Crystallography Vol. C, Table 4.3.2.3, fit range 0 < s < 6 1/A):

    f_e(s) = sum_i a_i exp(-b_i s^2),   s = sin(theta)/lambda = q/2,

with ``f_e`` in A, ``s`` in 1/A and ``q = 1/d``. The 3-D Fourier transform
of an atom's potential is ``h^2/(2 pi m0 e) f_e(q) = 47.877 V A^2 * f_e(q)``
and its value on the ``q_z = 0`` plane is the 2-D transform of the atom's
projected potential (Kirkland, *Advanced Computing in Electron Microscopy*,
ch. 5). Thermal vibration enters as a Debye-Waller factor ``exp(-B s^2)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import fft

# a_i (A), b_i (A^2) for f_e(s) = sum a_i exp(-b_i s^2)
PENG_PARAMETERS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "C": ((0.0489, 0.2091, 0.7537, 1.1420, 0.3555), (0.1140, 1.0825, 5.4281, 17.8811, 51.1341)),
    "Se": ((0.1574, 0.7614, 1.4834, 3.0016, 1.7978), (0.0686, 0.6808, 3.1163, 14.3458, 44.0455)),
    "Cd": ((0.3072, 1.1303, 3.2046, 2.9329, 1.6560), (0.0966, 0.8856, 4.6273, 20.6789, 73.4723)),
    "Au": ((0.3055, 1.3945, 2.9617, 3.8990, 2.0026), (0.0596, 0.5827, 3.1035, 11.9693, 47.9106)),
}

# Approximate room-temperature Debye-Waller factors B = 8 pi^2 <u_x^2> (A^2).
# Amorphous carbon positions are random already, so it gets none.
DEBYE_WALLER_A2: dict[str, float] = {"C": 0.0, "Se": 0.8, "Cd": 1.0, "Au": 0.62}

# h^2 / (2 pi m0 e) = 2 pi a0 e: f_e (A) -> 3-D potential transform (V A^3)
POTENTIAL_PER_SCATTERING_V_A2 = 47.8766


def scattering_factor(element: str, q_inv_a: np.ndarray | float) -> np.ndarray:
    """Electron scattering factor ``f_e`` (A) at spatial frequency ``q = 1/d`` (1/A)."""
    try:
        a, b = PENG_PARAMETERS[element]
    except KeyError:
        raise ValueError(
            f"no scattering factor for element {element!r}; known: {sorted(PENG_PARAMETERS)}"
        ) from None
    s2 = (np.asarray(q_inv_a, dtype=float) / 2.0) ** 2
    return sum((ai * np.exp(-bi * s2) for ai, bi in zip(a, b, strict=True)), np.zeros_like(s2))


def bin_atoms(positions_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Atoms per pixel: bilinear splatting of (row, col) positions onto a grid.

    Pixel ``(r, c)`` is centred at coordinate ``(r, c)``. Each atom's unit
    weight is shared between its four neighbouring pixels; atoms whose
    neighbourhood leaves the grid are dropped.
    """
    h, w = shape
    pos = np.asarray(positions_px, dtype=float).reshape(-1, 2)
    base = np.floor(pos)
    keep = (base[:, 0] >= 0) & (base[:, 0] < h - 1) & (base[:, 1] >= 0) & (base[:, 1] < w - 1)
    base, frac = base[keep].astype(np.intp), (pos - base)[keep]
    index = base[:, 0] * w + base[:, 1]
    fy, fx = frac[:, 0], frac[:, 1]
    weights = np.concatenate([(1.0 - fy) * (1.0 - fx), (1.0 - fy) * fx, fy * (1.0 - fx), fy * fx])
    index = np.concatenate([index, index + 1, index + w, index + w + 1])
    return np.bincount(index, weights, minlength=h * w).reshape(h, w).astype(np.float32)


@lru_cache(maxsize=32)
def _potential_kernel(element: str, shape: tuple[int, int], pixel_nm: float) -> np.ndarray:
    """rfft-grid transfer from atoms per pixel to projected potential (V A)."""
    pixel_a = 10.0 * pixel_nm
    qy = fft.fftfreq(shape[0], d=pixel_a)
    qx = fft.rfftfreq(shape[1], d=pixel_a)
    q2 = qy[:, None] ** 2 + qx[None, :] ** 2
    debye_waller = np.exp(-DEBYE_WALLER_A2[element] * q2 / 4.0)
    kernel = POTENTIAL_PER_SCATTERING_V_A2 * scattering_factor(element, np.sqrt(q2)) * debye_waller
    kernel = (kernel / pixel_a**2).astype(np.float32)
    kernel.setflags(write=False)
    return kernel


def projected_potential(counts: dict[str, np.ndarray], pixel_nm: float) -> np.ndarray:
    """Projected potential ``v_z`` (V A) from per-element atoms-per-pixel grids.

    One forward FFT per element and a single inverse FFT; the grid is
    periodic, so callers pad it beyond the field of view.
    """
    if not counts:
        raise ValueError("no atoms: counts is empty")
    shape = next(iter(counts.values())).shape
    spectrum = sum(
        fft.rfft2(grid, workers=-1) * _potential_kernel(element, shape, float(pixel_nm))
        for element, grid in counts.items()
    )
    return fft.irfft2(spectrum, s=shape, workers=-1).astype(np.float32)
