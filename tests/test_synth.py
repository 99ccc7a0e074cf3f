"""The synthetic HRTEM generator: determinism, masks, lattice fringes, physical constants."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from temseg.segment import find_particles
from temseg.synth import (
    DEFAULT_PIXEL_NM,
    MATERIALS,
    SyntheticFrame,
    frame_name,
    frame_seed,
    simulate_frame,
)
from temseg.synth.crystal import direction, make_particle, zone_rotation
from temseg.synth.frame import project_atoms
from temseg.synth.mask import outline_mask
from temseg.synth.optics import (
    electron_wavelength_nm,
    interaction_constant,
    scherzer_defocus_nm,
    transfer_function,
)
from temseg.synth.scattering import (
    POTENTIAL_PER_SCATTERING_V_A2,
    bin_atoms,
    projected_potential,
    scattering_factor,
)

# Quiet microscope for checks that must not depend on random conditions:
# corrected Cs at its Scherzer focus, no carbon, noise-free camera.
CLEAN: dict[str, Any] = {
    "voltage_kv": 300.0,
    "cs_mm": 0.02,
    "defocus_nm": scherzer_defocus_nm(0.02, 300.0),
    "aperture_mrad": None,
    "carbon_thickness_nm": 0.0,
    "tilt_deg": 0.0,
    "dose_e_per_A2": 1000.0,
    "gain_adu_per_e": 1.0,
    "offset_adu": 0.0,
    "noise": False,
}


def test_public_constants() -> None:
    assert DEFAULT_PIXEL_NM == 0.05
    assert MATERIALS["Au"].structure == "fcc" and MATERIALS["Au"].a_nm == pytest.approx(0.4078)
    cdse = MATERIALS["CdSe"]
    assert cdse.structure == "wurtzite"
    assert (cdse.a_nm, cdse.c_nm) == pytest.approx((0.430, 0.701))
    assert set(cdse.elements) == {"Cd", "Se"}


@pytest.mark.parametrize("material", ["Au", "CdSe"])
@pytest.mark.parametrize("size", [128, (96, 160)])
def test_shapes_dtypes_and_metadata(material: str, size: int | tuple[int, int]) -> None:
    frame = simulate_frame(material, size, seed=3)
    shape = (size, size) if isinstance(size, int) else size
    assert isinstance(frame, SyntheticFrame)
    assert frame.image.shape == shape and frame.image.dtype == np.uint16
    assert frame.mask.shape == shape and frame.mask.dtype == np.uint8
    assert set(np.unique(frame.mask)) <= {0, 1}
    meta = json.loads(json.dumps(frame.metadata))  # JSON-serialisable as is
    for key in (
        "material",
        "pixel_nm",
        "size",
        "seed",
        "voltage_kv",
        "defocus_nm",
        "cs_mm",
        "dose_e_per_A2",
        "focal_spread_nm",
        "convergence_mrad",
        "aperture_mrad",
        "carbon_thickness_nm",
        "detector_blur_px",
        "particles",
    ):
        assert key in meta, key
    assert meta["material"] == material and meta["pixel_nm"] == DEFAULT_PIXEL_NM
    assert meta["size"] == list(shape) and meta["seed"] == 3
    for p in meta["particles"]:
        assert set(p) >= {"center_px", "diameter_nm", "zone_axis", "tilt_deg", "n_atoms"}
        assert p["zone_axis"] in [list(v) for v in MATERIALS[material].zone_axes.values()]
        assert 0.0 <= p["tilt_deg"] <= 3.0 and p["n_atoms"] > 0


def test_same_seed_is_byte_identical_and_seeds_differ() -> None:
    a = simulate_frame("CdSe", 128, seed=11)
    b = simulate_frame("CdSe", 128, seed=11)
    c = simulate_frame("CdSe", 128, seed=12)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.mask.tobytes() == b.mask.tobytes()
    assert a.metadata == b.metadata
    assert a.image.tobytes() != c.image.tobytes()
    d = simulate_frame("CdSe", 128, seed=np.random.default_rng(11))
    assert d.metadata["seed"] is None and d.image.shape == (128, 128)


def test_unseeded_frame_records_a_seed_that_reproduces_it() -> None:
    first = simulate_frame("Au", 96)
    again = simulate_frame("Au", 96, seed=first.metadata["seed"])
    assert first.image.tobytes() == again.image.tobytes()


def test_override_replaces_one_value_without_shifting_other_draws() -> None:
    base = simulate_frame("Au", 96, seed=5, n_particles=2)
    other = simulate_frame("Au", 96, seed=5, n_particles=2, dose_e_per_A2=1234.0)
    assert other.metadata["dose_e_per_A2"] == 1234.0
    assert other.metadata["particles"] == base.metadata["particles"]
    assert other.metadata["defocus_nm"] == base.metadata["defocus_nm"]


def test_frame_seed_and_name() -> None:
    assert frame_name("Au", 7) == "Au_00007"
    assert frame_seed(1, "Au", 3) == frame_seed(1, "Au", 3)
    seeds = {frame_seed(1, m, i) for m in ("Au", "CdSe") for i in range(50)}
    assert len(seeds) == 100
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError):
        frame_name("Au", -1)


def test_bad_input_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="unknown material 'Ag'"):
        simulate_frame("Ag", 64, seed=0)
    with pytest.raises(TypeError, match="unknown overrides"):
        simulate_frame("Au", 64, seed=0, defocus=10.0)
    with pytest.raises(ValueError, match="zone axis"):
        simulate_frame("Au", 64, seed=0, n_particles=1, zone_axis="[0001]")
    with pytest.raises(ValueError, match="dose"):
        simulate_frame("Au", 64, seed=0, dose_e_per_A2=0.0)
    with pytest.raises(ValueError, match="size"):
        simulate_frame("Au", 8, seed=0)


def test_no_particles_gives_empty_mask() -> None:
    frame = simulate_frame("Au", 128, seed=1, n_particles=0)
    assert frame.mask.sum() == 0
    assert frame.metadata["particles"] == [] and frame.metadata["n_particles"] == 0


@pytest.mark.parametrize("material", ["Au", "CdSe"])
def test_particle_masks_match_their_records(material: str) -> None:
    frame = simulate_frame(material, 192, seed=21, n_particles=3)
    records = frame.metadata["particles"]
    assert len(records) == 3 and frame.mask.any()
    assert frame.mask.sum() <= sum(p["area_px"] for p in records)  # union of the outlines
    for p in records:
        assert 2.0 * 0.9 <= p["diameter_nm"] <= 8.0 * 1.1
        y, x = p["center_px"]
        assert frame.mask[round(y), round(x)] == 1  # a convex outline contains its centre
    touching = any(p.touches_border for p in find_particles(frame.mask))
    assert touching == any(p["touches_border"] for p in records)


def test_mask_is_the_projected_outline_where_the_particle_scatters() -> None:
    # A small objective aperture stops the Bragg beams: the particle images dark.
    frame = simulate_frame(
        "Au",
        192,
        seed=2,
        n_particles=1,
        diameter_nm=4.0,
        zone_axis="[110]",
        **{**CLEAN, "cs_mm": 0.0, "defocus_nm": 0.0, "aperture_mrad": 8.0},
    )
    smooth = ndimage.gaussian_filter(frame.image.astype(float), 2.0)
    particle = frame.mask.astype(bool)
    dark = smooth < 0.9 * np.median(smooth[~particle])
    assert (dark & particle).sum() / (dark | particle).sum() > 0.8


def _strongest_frequency(image: np.ndarray, pixel_nm: float, band: tuple[float, float]) -> float:
    """Spatial frequency (1/nm) of the strongest Fourier peak within ``band``."""
    data = image.astype(float) - image.mean()
    data *= np.outer(np.hanning(data.shape[0]), np.hanning(data.shape[1]))
    power = np.abs(np.fft.fft2(data)) ** 2
    fy = np.fft.fftfreq(data.shape[0], pixel_nm)
    fx = np.fft.fftfreq(data.shape[1], pixel_nm)
    q = np.hypot(fy[:, None], fx[None, :])
    inside = (q > band[0]) & (q < band[1])
    return float(q[inside][np.argmax(power[inside])])


@pytest.mark.parametrize(
    ("material", "zone", "d_nm", "band"),
    [
        ("Au", "[100]", 0.4078 / 2.0, (3.0, 6.0)),  # d(200)
        ("Au", "[110]", 0.4078 / np.sqrt(3.0), (3.0, 4.6)),  # d(111)
        ("CdSe", "[0001]", 0.430 * np.sqrt(3.0) / 2.0, (2.0, 3.5)),  # d(10-10)
    ],
)
def test_lattice_fringes_at_the_right_spatial_frequency(
    material: str, zone: str, d_nm: float, band: tuple[float, float]
) -> None:
    frame = simulate_frame(
        material, 256, seed=4, n_particles=1, diameter_nm=6.0, zone_axis=zone, **CLEAN
    )
    measured = _strongest_frequency(frame.image, DEFAULT_PIXEL_NM, band)
    assert measured == pytest.approx(1.0 / d_nm, rel=0.025)


def test_scattering_factors_are_physical() -> None:
    f0 = {el: float(scattering_factor(el, 0.0)) for el in ("C", "Se", "Cd", "Au")}
    assert f0["C"] == pytest.approx(2.51, abs=0.01)  # A, Peng et al. 1996
    assert f0["Au"] == pytest.approx(10.56, abs=0.02)
    assert f0["Au"] > f0["Cd"] > f0["Se"] > f0["C"]
    q = np.linspace(0.0, 4.0, 50)
    assert np.all(np.diff(scattering_factor("Au", q)) < 0)
    with pytest.raises(ValueError, match="no scattering factor"):
        scattering_factor("Xx", 0.0)


def test_projected_potential_of_one_atom_integrates_to_its_scattering_factor() -> None:
    pixel_nm = 0.05
    counts = {"Au": bin_atoms(np.array([[64.3, 70.6]]), (128, 128))}
    assert counts["Au"].sum() == pytest.approx(1.0)
    vz = projected_potential(counts, pixel_nm)  # V A
    integral = vz.sum() * (10.0 * pixel_nm) ** 2  # V A^3
    expected = POTENTIAL_PER_SCATTERING_V_A2 * float(scattering_factor("Au", 0.0))
    assert integral == pytest.approx(expected, rel=1e-3)
    assert np.unravel_index(np.argmax(vz), vz.shape) in {(64, 70), (64, 71), (65, 71), (65, 70)}


def test_wavelength_and_interaction_constant() -> None:
    assert electron_wavelength_nm(300.0) * 1e3 == pytest.approx(1.9687, abs=1e-3)  # pm
    assert electron_wavelength_nm(200.0) * 1e3 == pytest.approx(2.5079, abs=1e-3)
    assert interaction_constant(300.0) == pytest.approx(6.526e-4, rel=2e-3)  # rad/(V A)
    assert interaction_constant(200.0) == pytest.approx(7.288e-4, rel=2e-3)
    assert scherzer_defocus_nm(1.2, 300.0) == pytest.approx(-56.1, abs=0.5)


def test_transfer_function_passes_vacuum_and_respects_the_aperture() -> None:
    transfer = transfer_function((64, 64), 0.05, 300.0, -50.0, 1.2, 3.0, 0.2, aperture_mrad=10.0)
    assert transfer[0, 0] == pytest.approx(1.0)
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(64, 0.05), np.fft.fftfreq(64, 0.05)))
    cutoff = 10e-3 / electron_wavelength_nm(300.0)
    assert np.all(transfer[q > cutoff] == 0) and np.all(np.abs(transfer) <= 1.0 + 1e-6)


def test_vacuum_dose_and_shot_noise() -> None:
    dose, pixel_nm = 400.0, 0.05
    frame = simulate_frame(
        "Au",
        128,
        seed=8,
        n_particles=0,
        carbon_thickness_nm=0.0,
        dose_e_per_A2=dose,
        detector_blur_px=0.0,
        gain_adu_per_e=1.0,
        offset_adu=0.0,
        read_noise_adu=0.0,
    )
    mean = dose * (10.0 * pixel_nm) ** 2  # 100 electrons per pixel
    assert frame.image.mean() == pytest.approx(mean, rel=0.01)
    assert frame.image.var() == pytest.approx(mean, rel=0.1)  # Poisson


def test_drawn_gain_keeps_large_pixels_below_saturation() -> None:
    frame = simulate_frame("Au", 96, seed=9, pixel_nm=0.2, dose_e_per_A2=2000.0)
    vacuum_e = 2000.0 * (10.0 * 0.2) ** 2
    assert frame.metadata["gain_adu_per_e"] * vacuum_e <= 16000.0 + 1e-6
    assert frame.image.max() < np.iinfo(np.uint16).max


def test_particle_crystallography() -> None:
    rng = np.random.default_rng(0)
    au = make_particle(MATERIALS["Au"], 4.0, rng, zone="[110]", tilt_deg=0.0)
    pos = au.atoms["Au"]
    nearest, _ = cKDTree(pos).query(pos, k=2)
    assert nearest[:, 1].min() == pytest.approx(0.4078 / np.sqrt(2.0), rel=1e-6)
    volume = np.pi * 4.0**3 / 6.0
    assert au.n_atoms == pytest.approx(volume * MATERIALS["Au"].atoms_per_nm3, rel=0.15)

    cdse = make_particle(MATERIALS["CdSe"], 4.0, rng, zone="[0001]", tilt_deg=0.0)
    bond, _ = cKDTree(cdse.atoms["Cd"]).query(cdse.atoms["Se"])
    assert bond.min() == pytest.approx(0.701 * 0.375, rel=1e-6)  # u c along [0001]
    assert len(cdse.atoms["Cd"]) == pytest.approx(len(cdse.atoms["Se"]), rel=0.1)


def test_zone_rotation_puts_the_zone_axis_on_the_beam() -> None:
    lattice = MATERIALS["CdSe"].lattice
    for uvw in MATERIALS["CdSe"].zone_axes.values():
        zone = direction(lattice, uvw)
        rot = zone_rotation(zone, 0.7, 0.0, 0.0)
        assert rot @ zone == pytest.approx([0.0, 0.0, 1.0], abs=1e-12)
        tilted = zone_rotation(zone, 0.7, np.radians(2.0), 1.1) @ zone
        assert np.degrees(np.arccos(tilted[2])) == pytest.approx(2.0)


def test_lab_x_runs_along_columns_and_y_along_rows() -> None:
    atoms = np.array([[0.0, 0.0, 5.0], [1.0, 0.0, 0.0], [0.0, 0.5, -2.0]])  # nm
    rc = project_atoms(atoms, (10.0, 20.0), 0.05)
    assert rc == pytest.approx(np.array([[10.0, 20.0], [10.0, 40.0], [20.0, 20.0]]))


def test_outline_mask_rasterises_the_convex_hull() -> None:
    square = np.array([[2.0, 3.0], [2.0, 7.0], [6.0, 7.0], [6.0, 3.0], [4.0, 5.0]])
    mask = outline_mask(square, (10, 10))
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:7, 3:8] = True  # pixel centres on the edges count as inside
    assert np.array_equal(mask, expected)
    clipped = outline_mask(square - [4.0, 0.0], (10, 10))
    assert clipped.sum() == 3 * 5
