"""Crystal lattices, faceted particle shapes and zone-axis orientations.

Lengths are in nm. A particle is a block of lattice cut by facet planes
(a convex polyhedron given as half-spaces ``n . r <= d``), rotated so that a
low-index zone axis lies close to the beam (the lab ``z`` axis). Directions
and planes use 3-index Miller notation on the material's lattice vectors;
hexagonal 4-index labels are kept as text for display only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import ConvexHull, HalfspaceIntersection


@dataclass(frozen=True)
class Material:
    """A crystal: lattice constants (nm), fractional basis and its zone axes.

    ``zone_axes`` maps a display label (e.g. ``"[11-20]"``) to the 3-index
    direction ``[u, v, w]`` on the lattice vectors.
    """

    name: str
    structure: str  # "fcc" or "wurtzite"
    a_nm: float
    c_nm: float | None
    basis: tuple[tuple[str, tuple[float, float, float]], ...]
    zone_axes: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def elements(self) -> tuple[str, ...]:
        """Distinct elements of the basis, in order of first appearance."""
        return tuple(dict.fromkeys(symbol for symbol, _ in self.basis))

    @property
    def lattice(self) -> np.ndarray:
        """Lattice vectors as rows (3 x 3, nm)."""
        return lattice_vectors(self.structure, self.a_nm, self.c_nm)

    @property
    def atoms_per_nm3(self) -> float:
        """Number density of atoms in the bulk crystal (1/nm^3)."""
        return len(self.basis) / abs(float(np.linalg.det(self.lattice)))


def lattice_vectors(structure: str, a_nm: float, c_nm: float | None = None) -> np.ndarray:
    """Cartesian lattice vectors (rows, nm) of a cubic or hexagonal cell."""
    if structure == "fcc":
        return np.eye(3) * a_nm
    if structure == "wurtzite":
        if c_nm is None:
            raise ValueError("a hexagonal lattice needs c_nm")
        return np.array(
            [[a_nm, 0.0, 0.0], [-0.5 * a_nm, np.sqrt(3.0) / 2.0 * a_nm, 0.0], [0.0, 0.0, c_nm]]
        )
    raise ValueError(f"unknown structure {structure!r} (expected 'fcc' or 'wurtzite')")


_FCC_BASIS = ((0.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0))
_WURTZITE_U = 0.375  # ideal anion parameter

MATERIALS: dict[str, Material] = {
    "Au": Material(
        name="Au",
        structure="fcc",
        a_nm=0.4078,
        c_nm=None,
        basis=tuple(("Au", p) for p in _FCC_BASIS),
        zone_axes={"[100]": (1, 0, 0), "[110]": (1, 1, 0), "[111]": (1, 1, 1)},
    ),
    "CdSe": Material(
        name="CdSe",
        structure="wurtzite",
        a_nm=0.430,
        c_nm=0.701,
        basis=(
            ("Cd", (1 / 3, 2 / 3, 0.0)),
            ("Cd", (2 / 3, 1 / 3, 0.5)),
            ("Se", (1 / 3, 2 / 3, _WURTZITE_U)),
            ("Se", (2 / 3, 1 / 3, 0.5 + _WURTZITE_U)),
        ),
        zone_axes={"[11-20]": (1, 1, 0), "[0001]": (0, 0, 1), "[1-100]": (1, -1, 0)},
    ),
}


def reciprocal_vectors(lattice: np.ndarray) -> np.ndarray:
    """Reciprocal vectors as rows (1/nm, no 2 pi): ``a_i . b_j = delta_ij``."""
    return np.linalg.inv(lattice).T


def direction(lattice: np.ndarray, uvw: tuple[int, int, int]) -> np.ndarray:
    """Unit Cartesian vector of the lattice direction ``[u v w]``."""
    vec = np.asarray(uvw, dtype=float) @ lattice
    return vec / np.linalg.norm(vec)


def plane_normals(lattice: np.ndarray, hkl: np.ndarray) -> np.ndarray:
    """Unit Cartesian normals of the planes ``(h k l)`` (rows of ``hkl``)."""
    g = np.atleast_2d(np.asarray(hkl, dtype=float)) @ reciprocal_vectors(lattice)
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def d_spacing(lattice: np.ndarray, hkl: tuple[int, int, int]) -> float:
    """Interplanar spacing of ``(h k l)`` in nm."""
    return float(1.0 / np.linalg.norm(np.asarray(hkl, dtype=float) @ reciprocal_vectors(lattice)))


def _family(*members: tuple[int, int, int]) -> np.ndarray:
    """The given planes and their opposites, without duplicates."""
    rows = {tuple(int(v) for v in m) for m in members}
    rows |= {tuple(-v for v in m) for m in rows}
    return np.array(sorted(rows), dtype=float)


_FCC_111 = _family((1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1))
_FCC_100 = _family((1, 0, 0), (0, 1, 0), (0, 0, 1))
_HEX_PRISM = _family((1, 0, 0), (0, 1, 0), (1, -1, 0))  # {10-10}
_HEX_BASAL = _family((0, 0, 1))  # {0001}
_HEX_PYRAMID = _family((1, 0, 1), (0, 1, 1), (1, -1, 1), (-1, 0, 1), (0, -1, 1), (-1, 1, 1))


def polyhedron_vertices(normals: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Vertices of the bounded polyhedron ``normals @ r <= distances`` (origin inside)."""
    halfspaces = np.hstack([normals, -np.asarray(distances, dtype=float)[:, None]])
    return HalfspaceIntersection(halfspaces, np.zeros(3)).intersections


def facet_planes(
    material: Material, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """A random equilibrium-like facet set: unit normals, distances, shape parameters.

    Distances are relative (the main facets sit at ~1). fcc: {111} octahedron
    truncated by {100} (Wulff-like truncated octahedron / cuboctahedron).
    Wurtzite: {10-10} hexagonal prism capped by {0001}, corners cut by
    {10-11}. Each facet distance gets a few percent of random jitter so
    particles are not perfectly symmetric.
    """
    lattice = material.lattice
    if material.structure == "fcc":
        main = plane_normals(lattice, _FCC_111)
        base = np.ones(len(main))
        cut = plane_normals(lattice, _FCC_100)
        truncation = float(rng.uniform(0.58, 0.8))  # 0.577: cuboctahedron, 1: octahedron
        params = {"truncation_100": truncation}
    else:
        prism = plane_normals(lattice, _HEX_PRISM)
        basal = plane_normals(lattice, _HEX_BASAL)
        aspect = float(rng.uniform(0.7, 1.5))
        main = np.vstack([prism, basal])
        base = np.concatenate([np.ones(len(prism)), np.full(len(basal), aspect)])
        cut = plane_normals(lattice, _HEX_PYRAMID)
        truncation = float(rng.uniform(0.8, 1.0))
        params = {"aspect_c": aspect, "truncation_pyramidal": truncation}
    reach = (polyhedron_vertices(main, base) @ cut.T).max(axis=0)
    normals = np.vstack([main, cut])
    distances = np.concatenate([base, truncation * reach])
    distances *= rng.uniform(0.94, 1.06, size=len(distances))
    return normals, distances, params


def cut_lattice(
    material: Material, normals: np.ndarray, distances_nm: np.ndarray, origin_frac: np.ndarray
) -> dict[str, np.ndarray]:
    """Atoms of the crystal inside the polyhedron, per element (N x 3, nm, about its centre).

    ``origin_frac`` shifts the lattice by a fraction of the cell so the cut
    does not always pass through a lattice point.
    """
    lattice = material.lattice
    reach = float(np.linalg.norm(polyhedron_vertices(normals, distances_nm), axis=1).max())
    n_cells = np.ceil(reach * np.linalg.norm(reciprocal_vectors(lattice), axis=1)).astype(int) + 1
    grid = np.stack(
        np.meshgrid(*(np.arange(-n, n + 1) for n in n_cells), indexing="ij"), axis=-1
    ).reshape(-1, 3)
    cells = (grid - np.asarray(origin_frac, dtype=float)) @ lattice
    cell_diagonal = float(np.linalg.norm(lattice.sum(axis=0)))
    cells = cells[np.einsum("ij,ij->i", cells, cells) <= (reach + cell_diagonal) ** 2]
    atoms: dict[str, list[np.ndarray]] = {}
    for symbol, frac in material.basis:
        pos = cells + np.asarray(frac) @ lattice
        inside = np.all(pos @ normals.T <= distances_nm + 1e-9, axis=1)
        atoms.setdefault(symbol, []).append(pos[inside])
    return {symbol: np.concatenate(parts) for symbol, parts in atoms.items()}


def axis_angle_matrix(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotation matrix (Rodrigues) by ``angle_rad`` about ``axis``."""
    axis = np.asarray(axis, dtype=float)
    norm = np.linalg.norm(axis)
    if norm == 0.0:
        return np.eye(3)
    x, y, z = axis / norm
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * (k @ k)


def zone_rotation(
    zone: np.ndarray, rotation_rad: float, tilt_rad: float, tilt_azimuth_rad: float
) -> np.ndarray:
    """Rotation taking crystal coordinates to the lab frame (beam along lab ``z``).

    The unit vector ``zone`` is turned onto ``z``, then the crystal is spun
    by ``rotation_rad`` about the beam and tilted by ``tilt_rad`` about the
    in-plane axis at ``tilt_azimuth_rad``.
    """
    zone = np.asarray(zone, dtype=float) / np.linalg.norm(zone)
    beam = np.array([0.0, 0.0, 1.0])
    cos_angle = float(np.clip(zone @ beam, -1.0, 1.0))
    if cos_angle < -1.0 + 1e-12:
        onto_beam = np.diag([1.0, -1.0, -1.0])
    else:
        onto_beam = axis_angle_matrix(np.cross(zone, beam), float(np.arccos(cos_angle)))
    spin = axis_angle_matrix(beam, rotation_rad)
    tilt_axis = np.array([np.cos(tilt_azimuth_rad), np.sin(tilt_azimuth_rad), 0.0])
    return axis_angle_matrix(tilt_axis, tilt_rad) @ spin @ onto_beam


@dataclass
class Particle:
    """A rotated particle: atoms per element in the lab frame (nm, about its centre)."""

    atoms: dict[str, np.ndarray]
    zone_label: str
    zone_uvw: tuple[int, int, int]
    tilt_deg: float
    rotation_deg: float
    shape: dict[str, float]

    @property
    def n_atoms(self) -> int:
        return int(sum(len(p) for p in self.atoms.values()))

    def projected_radius_nm(self) -> float:
        """Largest distance of an atom from the centre in the image plane (nm)."""
        xy = np.concatenate([p[:, :2] for p in self.atoms.values()])
        return float(np.sqrt((xy**2).sum(axis=1).max())) if len(xy) else 0.0


def make_particle(
    material: Material,
    diameter_nm: float,
    rng: np.random.Generator,
    *,
    zone: str | None = None,
    tilt_deg: float | None = None,
) -> Particle:
    """A faceted particle of volume-equivalent diameter ~``diameter_nm``, near a zone axis.

    ``zone`` is one of ``material.zone_axes`` (random if None); ``tilt_deg``
    is the tilt off that zone axis (uniform 0-3 deg if None).
    """
    if diameter_nm < 0.8:
        raise ValueError(f"particle diameter must be >= 0.8 nm, got {diameter_nm}")
    normals, distances, shape = facet_planes(material, rng)
    unit_volume = ConvexHull(polyhedron_vertices(normals, distances)).volume
    scale = (np.pi * diameter_nm**3 / 6.0 / unit_volume) ** (1.0 / 3.0)
    atoms = cut_lattice(material, normals, distances * scale, rng.random(3))

    labels = list(material.zone_axes)
    label = labels[int(rng.integers(len(labels)))]
    rotation = float(rng.uniform(0.0, 2.0 * np.pi))
    tilt = float(rng.uniform(0.0, 3.0))
    azimuth = float(rng.uniform(0.0, 2.0 * np.pi))
    if zone is not None:
        if zone not in material.zone_axes:
            raise ValueError(f"zone axis {zone!r} is not one of {labels} for {material.name}")
        label = zone
    if tilt_deg is not None:
        tilt = float(tilt_deg)
    uvw = material.zone_axes[label]
    rot = zone_rotation(direction(material.lattice, uvw), rotation, np.radians(tilt), azimuth)
    return Particle(
        atoms={symbol: pos @ rot.T for symbol, pos in atoms.items()},
        zone_label=label,
        zone_uvw=uvw,
        tilt_deg=tilt,
        rotation_deg=float(np.degrees(rotation)),
        shape=shape,
    )
