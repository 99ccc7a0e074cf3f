"""Physics-based synthetic HRTEM frames with exact particle masks (pure, no file I/O).

Faceted Au (fcc) or CdSe (wurtzite) nanoparticles near a low-index zone
axis on amorphous carbon, imaged through a phase-object / objective-lens
model with partial coherence and a noisy camera. See ``docs/synth.md``.

Mask definition: a pixel is particle (1) when it lies inside the projected
convex hull (outline) of the particle's atoms, i.e. the 2-D projection of
the faceted particle onto the image plane; background is 0.
"""

from temseg.synth.crystal import MATERIALS, Material
from temseg.synth.frame import (
    DEFAULT_PIXEL_NM,
    SyntheticFrame,
    frame_name,
    frame_seed,
    get_material,
    simulate_frame,
)

__all__ = [
    "DEFAULT_PIXEL_NM",
    "MATERIALS",
    "Material",
    "SyntheticFrame",
    "frame_name",
    "frame_seed",
    "get_material",
    "simulate_frame",
]
