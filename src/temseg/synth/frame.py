"""One synthetic HRTEM frame: faceted particles on amorphous carbon, imaged by a TEM.

Pipeline (see ``docs/synth.md``): faceted crystal particles near a zone axis
and a random amorphous-carbon film are binned per element onto a padded
pixel grid, turned into a projected potential with tabulated electron
scattering factors, into a phase-object exit wave, through the objective
lens transfer (defocus, Cs, coherence envelopes, optional aperture) and
onto a camera (shot noise, blur, gain, offset, read noise).

Mask definition: a pixel is particle (1) when its centre lies inside the
convex hull of the particle's atom centres projected onto the image plane,
i.e. the 2-D projection (outline) of the faceted particle; 0 elsewhere.

Random parameters are drawn from one ``np.random.Generator`` in a fixed
order, so the same seed gives a byte-identical image and mask; an override
replaces a drawn value without shifting the other draws.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.fft import next_fast_len

from temseg.synth import optics
from temseg.synth.crystal import MATERIALS, Material, Particle, make_particle
from temseg.synth.detector import detect
from temseg.synth.mask import outline_mask
from temseg.synth.scattering import bin_atoms, projected_potential

DEFAULT_PIXEL_NM = 0.05
CARBON_DENSITY_G_CM3 = 2.0
CARBON_ATOMS_PER_NM3 = CARBON_DENSITY_G_CM3 * 6.02214076e23 / 12.011 * 1e-21
MIN_PAD_PX, MAX_PAD_PX = 16, 64
MAX_VACUUM_ADU = 16000.0  # a drawn gain is capped so vacuum stays well below uint16 saturation

CONDITION_KEYS = (
    "voltage_kv",
    "cs_mm",
    "defocus_nm",
    "focal_spread_nm",
    "convergence_mrad",
    "aperture_mrad",
    "carbon_thickness_nm",
    "dose_e_per_A2",
    "detector_blur_px",
    "gain_adu_per_e",
    "offset_adu",
    "read_noise_adu",
)
PARTICLE_KEYS = ("diameter_nm", "zone_axis", "tilt_deg")
OVERRIDE_KEYS = frozenset((*CONDITION_KEYS, *PARTICLE_KEYS, "noise"))


@dataclass
class SyntheticFrame:
    """A simulated frame: uint16 image, uint8 0/1 mask (same H x W) and its metadata."""

    image: np.ndarray
    mask: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


def get_material(name: str) -> Material:
    """The material called ``name``; a clear error lists the known ones."""
    try:
        return MATERIALS[name]
    except KeyError:
        raise ValueError(f"unknown material {name!r}; known: {', '.join(MATERIALS)}") from None


def frame_name(material: str, index: int) -> str:
    """File stem of frame ``index`` of ``material``, e.g. ``Au_00007``."""
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    return f"{material}_{index:05d}"


def frame_seed(seed: int, material: str, index: int) -> int:
    """Seed of frame ``index`` of ``material`` in a run seeded with ``seed`` (63-bit int).

    Frames are independent: any one can be regenerated from (seed, material, index).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed} index={index}")
    words = np.random.SeedSequence([seed, zlib.crc32(material.encode()), index]).generate_state(2)
    return (int(words[0]) << 31) ^ int(words[1])


def draw_conditions(rng: np.random.Generator, overrides: dict[str, Any]) -> dict[str, Any]:
    """Microscope, specimen and camera conditions of one frame (units in the key names).

    300 kV (70 %) or 200 kV; Cs uncorrected 1.0-1.3 mm or corrected
    -0.01-0.05 mm (50 % each); defocus near Scherzer (70 %) or -50..+20 nm;
    focal spread 2-5 nm; convergence 0.05-0.3 mrad; objective aperture
    15-30 mrad (25 %) or none; carbon 2-8 nm; dose 100-2000 e/A^2
    (log-uniform); blur 0.5-1.5 px; gain 1-8 ADU/e (log-uniform); offset
    0-500 ADU; read noise 0-5 ADU. ``overrides`` replace drawn values.
    """

    def pick(key: str, drawn: Any) -> Any:
        return overrides.get(key, drawn)

    c: dict[str, Any] = {}
    c["voltage_kv"] = float(pick("voltage_kv", rng.choice([200.0, 300.0], p=[0.3, 0.7])))
    corrected, cs_u = rng.random() < 0.5, rng.random()
    cs_drawn = -0.01 + 0.06 * cs_u if corrected else 1.0 + 0.3 * cs_u
    c["cs_mm"] = float(pick("cs_mm", cs_drawn))
    near, df_u, df_far = rng.random() < 0.7, rng.uniform(-1.0, 1.0), rng.uniform(-50.0, 20.0)
    scherzer = optics.scherzer_defocus_nm(c["cs_mm"], c["voltage_kv"])
    df_drawn = scherzer + df_u * max(0.25 * abs(scherzer), 2.0) if near else df_far
    c["defocus_nm"] = float(pick("defocus_nm", df_drawn))
    c["focal_spread_nm"] = float(pick("focal_spread_nm", rng.uniform(2.0, 5.0)))
    c["convergence_mrad"] = float(pick("convergence_mrad", rng.uniform(0.05, 0.3)))
    has_aperture, aperture = rng.random() < 0.25, rng.uniform(15.0, 30.0)
    drawn_aperture = float(aperture) if has_aperture else None
    chosen_aperture = pick("aperture_mrad", drawn_aperture)
    c["aperture_mrad"] = None if chosen_aperture is None else float(chosen_aperture)
    c["carbon_thickness_nm"] = float(pick("carbon_thickness_nm", rng.uniform(2.0, 8.0)))
    dose = np.exp(rng.uniform(np.log(100.0), np.log(2000.0)))
    c["dose_e_per_A2"] = float(pick("dose_e_per_A2", dose))
    c["detector_blur_px"] = float(pick("detector_blur_px", rng.uniform(0.5, 1.5)))
    c["gain_adu_per_e"] = float(pick("gain_adu_per_e", np.exp(rng.uniform(0.0, np.log(8.0)))))
    c["offset_adu"] = float(pick("offset_adu", rng.uniform(0.0, 500.0)))
    c["read_noise_adu"] = float(pick("read_noise_adu", rng.uniform(0.0, 5.0)))
    _check_conditions(c)
    return c


def _check_conditions(c: dict[str, Any]) -> None:
    positive = ("voltage_kv", "dose_e_per_A2")
    non_negative = (
        "focal_spread_nm",
        "convergence_mrad",
        "carbon_thickness_nm",
        "detector_blur_px",
        "gain_adu_per_e",
        "read_noise_adu",
    )
    for key in positive:
        if not c[key] > 0:
            raise ValueError(f"{key} must be > 0, got {c[key]}")
    for key in non_negative:
        if not c[key] >= 0:
            raise ValueError(f"{key} must be >= 0, got {c[key]}")
    if c["aperture_mrad"] is not None and not c["aperture_mrad"] > 0:
        raise ValueError(f"aperture_mrad must be > 0 or None, got {c['aperture_mrad']}")


def draw_n_particles(rng: np.random.Generator) -> int:
    """Particles in a frame: none with probability 0.05, else 1-4 (uniform)."""
    empty = rng.random() < 0.05
    count = int(rng.integers(1, 5))
    return 0 if empty else count


def _frame_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if min(h, w) < 16:
        raise ValueError(f"frame size must be at least 16 x 16 pixels, got {h} x {w}")
    return int(h), int(w)


def _place(
    radius_px: float,
    placed: list[tuple[float, float, float]],
    shape: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Centre (row, col) in the frame, avoiding overlap with placed particles where possible."""
    centre = (0.0, 0.0)
    for _ in range(50):
        centre = (float(rng.uniform(0, shape[0] - 1)), float(rng.uniform(0, shape[1] - 1)))
        if all(
            np.hypot(centre[0] - y, centre[1] - x) >= 0.9 * (radius_px + r) for y, x, r in placed
        ):
            break
    return centre


def _pad_px(conditions: dict[str, Any], pixel_nm: float) -> int:
    """Margin (pixels) that keeps lens delocalisation from wrapping round the FFT grid."""
    max_q = np.sqrt(2.0) / (2.0 * pixel_nm)
    if conditions["aperture_mrad"] is not None:
        wavelength = optics.electron_wavelength_nm(conditions["voltage_kv"])
        max_q = min(max_q, conditions["aperture_mrad"] * 1e-3 / wavelength)
    shift = optics.delocalization_nm(
        max_q,
        conditions["voltage_kv"],
        conditions["defocus_nm"],
        conditions["cs_mm"],
        conditions["focal_spread_nm"],
        conditions["convergence_mrad"],
    )
    return int(np.clip(np.ceil(shift / pixel_nm) + 8, MIN_PAD_PX, MAX_PAD_PX))


def project_atoms(
    atoms_nm: np.ndarray, centre_px: tuple[float, float], pixel_nm: float
) -> np.ndarray:
    """Image-plane (row, col) pixel coordinates of lab-frame atoms (N x 3, nm).

    Lab ``x`` runs along columns, lab ``y`` along rows, the beam along ``z``;
    the particle centre lands on ``centre_px``. Used for both the potential
    and the mask, so the two always agree.
    """
    return atoms_nm[:, 1::-1] / pixel_nm + np.asarray(centre_px, dtype=float)


def _particle_record(
    particle: Particle,
    centre: tuple[float, float],
    mask: np.ndarray,
    material: Material,
) -> dict[str, Any]:
    n_atoms = particle.n_atoms
    diameter = (6.0 * n_atoms / (np.pi * material.atoms_per_nm3)) ** (1.0 / 3.0)
    touches = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    return {
        "center_px": [round(centre[0], 3), round(centre[1], 3)],
        "diameter_nm": round(float(diameter), 3),
        "zone_axis": list(particle.zone_uvw),
        "zone_axis_label": particle.zone_label,
        "tilt_deg": round(particle.tilt_deg, 3),
        "rotation_deg": round(particle.rotation_deg, 3),
        "n_atoms": n_atoms,
        "area_px": int(mask.sum()),
        "touches_border": touches,
    }


def simulate_frame(
    material: str,
    size: int | tuple[int, int] = 512,
    seed: int | np.random.Generator | None = None,
    *,
    pixel_nm: float = DEFAULT_PIXEL_NM,
    n_particles: int | None = None,
    **overrides: Any,
) -> SyntheticFrame:
    """Simulate one HRTEM frame of ``material`` particles on amorphous carbon.

    ``size`` is pixels (square, or ``(rows, cols)``), ``pixel_nm`` nm per
    pixel. ``n_particles`` fixes the particle count (default: 0-4, see
    :func:`draw_n_particles`). ``overrides`` fix any condition of
    :func:`draw_conditions` by its metadata key, and ``diameter_nm``,
    ``zone_axis`` (a label of ``MATERIALS[material].zone_axes``) or
    ``tilt_deg`` for every particle; ``noise=False`` records the noise-free
    mean image. A drawn (not overridden) gain is capped so that vacuum reads
    at most ``MAX_VACUUM_ADU``. An int (or None, then drawn and recorded) ``seed`` makes the
    frame reproducible.
    """
    mat = get_material(material)
    shape = _frame_shape(size)
    if not pixel_nm > 0:
        raise ValueError(f"pixel_nm must be > 0, got {pixel_nm}")
    unknown = set(overrides) - OVERRIDE_KEYS
    if unknown:
        raise TypeError(f"unknown overrides {sorted(unknown)}; allowed: {sorted(OVERRIDE_KEYS)}")
    if n_particles is not None and n_particles < 0:
        raise ValueError(f"n_particles must be >= 0, got {n_particles}")
    if isinstance(seed, np.random.Generator):
        rng, seed_value = seed, None
    else:
        seed_value = int(np.random.default_rng().integers(2**63)) if seed is None else int(seed)
        rng = np.random.default_rng(seed_value)

    conditions = draw_conditions(rng, overrides)
    if "gain_adu_per_e" not in overrides:
        vacuum_e = conditions["dose_e_per_A2"] * (10.0 * pixel_nm) ** 2
        conditions["gain_adu_per_e"] = min(conditions["gain_adu_per_e"], MAX_VACUUM_ADU / vacuum_e)
    count = draw_n_particles(rng) if n_particles is None else int(n_particles)

    particles: list[tuple[Particle, tuple[float, float]]] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        diameter = float(overrides.get("diameter_nm", rng.uniform(2.0, 8.0)))
        particle = make_particle(
            mat, diameter, rng, zone=overrides.get("zone_axis"), tilt_deg=overrides.get("tilt_deg")
        )
        radius = particle.projected_radius_nm() / pixel_nm
        centre = _place(radius, placed, shape, rng)
        placed.append((*centre, radius))
        particles.append((particle, centre))

    pad = _pad_px(conditions, pixel_nm)
    grid = (next_fast_len(shape[0] + 2 * pad, True), next_fast_len(shape[1] + 2 * pad, True))
    counts: dict[str, np.ndarray] = {}
    carbon_per_px = CARBON_ATOMS_PER_NM3 * conditions["carbon_thickness_nm"] * pixel_nm**2
    if carbon_per_px > 0:  # uniform random atoms, binned to their nearest pixel
        n_carbon = rng.poisson(carbon_per_px * grid[0] * grid[1])
        pixels = rng.integers(0, grid[0] * grid[1], n_carbon)
        carbon = np.bincount(pixels, minlength=grid[0] * grid[1]).reshape(grid)
        counts["C"] = carbon.astype(np.float32)
    for element in mat.elements:
        parts = [project_atoms(p.atoms[element], c, pixel_nm) for p, c in particles]
        if parts:
            counts[element] = bin_atoms(np.concatenate(parts) + pad, grid)

    if counts:
        phase = optics.interaction_constant(conditions["voltage_kv"]) * projected_potential(
            counts, pixel_nm
        )
    else:
        phase = np.zeros(grid, dtype=np.float32)
    transfer = optics.transfer_function(
        grid,
        pixel_nm,
        conditions["voltage_kv"],
        conditions["defocus_nm"],
        conditions["cs_mm"],
        conditions["focal_spread_nm"],
        conditions["convergence_mrad"],
        conditions["aperture_mrad"],
    )
    intensity = optics.image_intensity(phase, transfer)[pad : pad + shape[0], pad : pad + shape[1]]
    image = detect(
        intensity,
        rng,
        pixel_nm=pixel_nm,
        dose_e_per_a2=conditions["dose_e_per_A2"],
        blur_px=conditions["detector_blur_px"],
        gain_adu_per_e=conditions["gain_adu_per_e"],
        offset_adu=conditions["offset_adu"],
        read_noise_adu=conditions["read_noise_adu"],
        noise=bool(overrides.get("noise", True)),
    )

    mask = np.zeros(shape, dtype=bool)
    records = []
    for particle, centre in particles:
        xy = np.concatenate([project_atoms(a, centre, pixel_nm) for a in particle.atoms.values()])
        own = outline_mask(xy, shape)
        mask |= own
        records.append(_particle_record(particle, centre, own, mat))

    metadata: dict[str, Any] = {
        "material": mat.name,
        "pixel_nm": float(pixel_nm),
        "size": [shape[0], shape[1]],
        "seed": seed_value,
        **conditions,
        "carbon_density_g_cm3": CARBON_DENSITY_G_CM3,
        "noise": bool(overrides.get("noise", True)),
        "n_particles": len(records),
        "particles": records,
    }
    return SyntheticFrame(image=image, mask=mask.astype(np.uint8), metadata=metadata)
