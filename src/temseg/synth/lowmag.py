"""Low-magnification frames (mass-thickness contrast) and the wide training distribution.

At tens of thousands of times magnification (about 0.1-2 nm per pixel) the
lattice is not resolved: a particle shows as a region of lower transmitted
intensity, darker where it is thicker (tetrahedra and plates are wedges,
spheres domes) and varying from particle to particle with its orientation
(diffraction contrast). :func:`simulate_lowmag_frame` draws such frames:

- particles: triangles, hexagons, ellipses, rounded polygons and rods,
  5-120 px across, from isolated to crowded and overlapping (overlaps add
  thickness); the mask is the union of their outlines;
- transmitted intensity ``exp(-t)`` with a per-particle optical thickness
  ``t`` (0.3-2.5 at the centre, times 0.6 for CdSe) shaped as flat, dome or wedge, on a carbon
  film with a smooth random thickness texture;
- an edge term from defocus (Fresnel fringe: bright or dark rim), blur,
  uneven illumination (a linear ramp and a radial fall-off up to 35 %),
  Poisson noise at 30-3000 counts per pixel, gain, offset;
- with probability 0.2 inverted contrast (annular dark field: particles
  bright), with probability 0.15 faint lattice fringes of 2-8 px period.

:func:`simulate_wide_frame` mixes these with HRTEM frames of
:func:`temseg.synth.simulate_frame` at pixel sizes of 0.02-0.2 nm (lattice
resolved or barely), both under uneven illumination: the distribution the
wide bundled model is trained on. Pure functions, no I/O; one seed gives one
frame.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from temseg.synth.frame import SyntheticFrame, get_material, simulate_frame

# mean optical thickness at a particle's centre relative to gold's
RELATIVE_CONTRAST = {"Au": 1.0, "CdSe": 0.6}
SHAPES = ("triangle", "hexagon", "ellipse", "polygon", "rod")


def _polygon_mask(
    vertices: np.ndarray, shape: tuple[int, int], offset: tuple[int, int]
) -> np.ndarray:
    """Pixels (of a box at ``offset``) whose centres lie inside a convex polygon."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    yy = yy + offset[0]
    xx = xx + offset[1]
    inside = np.ones(shape, dtype=bool)
    n = len(vertices)
    centre = vertices.mean(axis=0)
    for i in range(n):
        (y0, x0), (y1, x1) = vertices[i], vertices[(i + 1) % n]
        side = (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
        ref = (x1 - x0) * (centre[0] - y0) - (y1 - y0) * (centre[1] - x0)
        inside &= side * np.sign(ref) >= 0
    return inside


def _shape_vertices(kind: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Convex outline (row, col offsets from the centre) of a particle of ``kind``."""
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "triangle":
        t = angle + np.arange(3) * 2 * math.pi / 3
        r = radius * np.ones(3)
    elif kind == "hexagon":
        t = angle + np.arange(6) * math.pi / 3
        r = radius * np.ones(6)
    elif kind == "polygon":
        n = int(rng.integers(4, 9))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        r = radius * rng.uniform(0.75, 1.0, n)
    else:  # ellipse or rod: many vertices on an ellipse
        aspect = rng.uniform(0.6, 1.0) if kind == "ellipse" else rng.uniform(0.2, 0.45)
        s = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        y, x = radius * aspect * np.sin(s), radius * np.cos(s)
        c, d = math.cos(angle), math.sin(angle)
        return np.stack([c * y + d * x, -d * y + c * x], axis=1)
    return np.stack([r * np.sin(t), r * np.cos(t)], axis=1)


def _particle(
    shape: tuple[int, int], centre: tuple[float, float], radius: float, rng: np.random.Generator
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Box, outline mask and optical-thickness profile (0..1) of one particle."""
    kind = SHAPES[int(rng.choice(len(SHAPES), p=[0.3, 0.15, 0.25, 0.2, 0.1]))]
    vertices = _shape_vertices(kind, radius, rng) + np.asarray(centre)
    rounding = rng.uniform(0.0, 0.3) * radius if kind in ("triangle", "hexagon", "polygon") else 0
    if rounding > 0:  # shrink towards the centre, then grow back round
        vertices = centre + (vertices - centre) * (1 - rounding / radius)
    margin = int(rounding) + 2
    y0 = max(int(vertices[:, 0].min()) - margin, 0)
    x0 = max(int(vertices[:, 1].min()) - margin, 0)
    y1 = min(int(vertices[:, 0].max()) + margin + 2, shape[0])
    x1 = min(int(vertices[:, 1].max()) + margin + 2, shape[1])
    if y1 <= y0 or x1 <= x0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool), np.zeros((0, 0))
    box = (y1 - y0, x1 - x0)
    core = _polygon_mask(vertices, box, (y0, x0))
    if rounding > 0:
        outside = ndimage.distance_transform_edt(~core)
        own = outside <= rounding
    else:
        own = core
    depth = ndimage.distance_transform_edt(own)
    scale = max(float(depth.max()), 1.0)
    profile_kind = rng.choice(3)
    if profile_kind == 0:  # plate: flat with a soft edge
        profile = np.clip(depth / (0.15 * scale), 0, 1)
    elif profile_kind == 1:  # dome (sphere-like)
        profile = np.sqrt(np.clip(depth / scale, 0, 1))
    else:  # wedge (tetrahedron seen from a side): a ramp across the particle
        yy, xx = np.mgrid[y0:y1, x0:x1]
        g = rng.normal(size=2)
        ramp = (g[0] * (yy - centre[0]) + g[1] * (xx - centre[1])) / (np.hypot(*g) * radius)
        profile = np.clip(0.6 + 0.4 * ramp, 0.2, 1.0) * np.clip(depth / (0.1 * scale), 0, 1)
    return (slice(y0, y1), slice(x0, x1)), own, profile * own


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-12)


def _illumination(shape: tuple[int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth illumination field of mean about 1: linear ramp and radial fall-off."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    yy = yy / shape[0] - 0.5
    xx = xx / shape[1] - 0.5
    g = rng.normal(size=2)
    ramp = (g[0] * yy + g[1] * xx) / max(np.hypot(*g), 1e-12)
    cy, cx = rng.uniform(-0.5, 0.5, 2)
    radial = (yy - cy) ** 2 + (xx - cx) ** 2
    share = rng.uniform()
    field = 1 + strength * (share * ramp - (1 - share) * radial)
    return np.clip(field, 0.3, None)


def _place(
    n: int, shape: tuple[int, int], radii: np.ndarray, overlap: float, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Centres for ``n`` particles; ``overlap`` (0..1) is how far they may interpenetrate."""
    placed: list[tuple[float, float, float]] = []
    for r in radii[:n]:
        centre = (0.0, 0.0)
        for _ in range(30):
            centre = (rng.uniform(-0.1 * r, shape[0] + 0.1 * r), rng.uniform(-0.1 * r, shape[1]))
            if all(
                math.hypot(centre[0] - y, centre[1] - x) >= (1 - overlap) * (r + q)
                for y, x, q in placed
            ):
                break
        placed.append((*centre, float(r)))
    return [(y, x) for y, x, _ in placed]


def simulate_lowmag_frame(
    material: str, size: int | tuple[int, int] = 512, seed: int | np.random.Generator | None = None
) -> SyntheticFrame:
    """A low-magnification, mass-thickness-contrast frame of ``material`` particles.

    ``size`` is pixels (square or (rows, cols)); the metadata records the
    drawn conditions but no pixel size (such frames rarely carry one).
    """
    mat = get_material(material)
    h, w = (size, size) if isinstance(size, int | np.integer) else (int(size[0]), int(size[1]))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape = (h, w)

    radius_px = math.exp(rng.uniform(math.log(5.0), math.log(min(60.0, 0.3 * min(h, w)))))
    spread = rng.uniform(0.05, 0.4)
    coverage = rng.uniform(0.0, 0.7) if rng.random() > 0.05 else 0.0
    mean_area = math.pi * radius_px**2 * 0.8
    n = int(min(400, round(coverage * h * w / mean_area)))
    radii = radius_px * np.exp(rng.normal(0, spread, max(n, 1)))
    centres = _place(n, shape, radii, rng.uniform(0.0, 0.35), rng)

    contrast = RELATIVE_CONTRAST.get(mat.name, 0.8)
    thickness = np.zeros(shape)
    mask = np.zeros(shape, dtype=bool)
    for centre, r in zip(centres, radii, strict=False):
        box, own, profile = _particle(shape, centre, float(r), rng)
        if own.size == 0:
            continue
        strength = contrast * math.exp(rng.uniform(math.log(0.3), math.log(2.5)))
        thickness[box] += strength * profile
        mask[box] |= own
    if rng.random() < 0.15:  # faint lattice fringes inside particles
        period = rng.uniform(2.0, 8.0)
        theta = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[:h, :w]
        fringes = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
        thickness += rng.uniform(0.02, 0.15) * fringes * (thickness > 0)
    film = rng.uniform(0.0, 0.08) * _smooth_noise(shape, rng.uniform(1.0, 6.0), rng)
    optical = np.clip(thickness + film + rng.uniform(0.0, 0.2), 0, None)

    dark_field = rng.random() < 0.2
    if dark_field:
        signal = 0.05 + (1 - np.exp(-optical))
    else:
        signal = np.exp(-optical)
    rim = rng.uniform(-0.6, 0.6) * ndimage.gaussian_laplace(optical, rng.uniform(0.7, 3.0))
    signal = np.clip(signal + rim, 0.0, None)
    signal = ndimage.gaussian_filter(signal, rng.uniform(0.3, 2.0))
    signal = signal * _illumination(shape, rng.uniform(0.0, 0.35), rng)

    counts = math.exp(rng.uniform(math.log(30.0), math.log(3000.0)))
    electrons = rng.poisson(signal * counts).astype(np.float64)
    gain = math.exp(rng.uniform(0.0, math.log(8.0)))
    gain = min(gain, 16000.0 / (counts * max(float(signal.max()), 1e-6)))
    offset = rng.uniform(0.0, 500.0)
    image = np.clip(electrons * gain + offset + rng.normal(0, 2.0, shape), 0, 65535)
    metadata: dict[str, Any] = {
        "material": mat.name,
        "regime": "lowmag",
        "size": [h, w],
        "n_particles": len(centres),
        "radius_px": round(radius_px, 2),
        "coverage": round(float(mask.mean()), 4),
        "counts_per_px": round(counts, 1),
        "dark_field": bool(dark_field),
    }
    return SyntheticFrame(
        image=image.astype(np.uint16), mask=mask.astype(np.uint8), metadata=metadata
    )


def simulate_wide_frame(
    material: str, size: int | tuple[int, int] = 512, seed: int | None = None
) -> SyntheticFrame:
    """A frame of the wide distribution: low-magnification (55 %) or HRTEM at 0.02-0.2 nm/px.

    HRTEM frames also get uneven illumination; their metadata keeps the
    drawn pixel size under ``drawn_pixel_nm`` (not ``pixel_nm``: the wide
    model is trained on frames as they come, without resampling).
    """
    rng = np.random.default_rng(seed)
    if rng.random() < 0.55:
        return simulate_lowmag_frame(material, size, rng)
    pixel_nm = math.exp(rng.uniform(math.log(0.02), math.log(0.2)))
    frame = simulate_frame(material, size, rng, pixel_nm=pixel_nm)
    field = _illumination(frame.mask.shape, rng.uniform(0.0, 0.3), rng)
    image = np.clip(frame.image * field, 0, 65535).astype(np.uint16)
    metadata = dict(frame.metadata)
    metadata["drawn_pixel_nm"] = metadata.pop("pixel_nm")
    metadata["regime"] = "hrtem"
    return SyntheticFrame(image=image, mask=frame.mask, metadata=metadata)
