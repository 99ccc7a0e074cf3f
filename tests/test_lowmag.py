"""The low-magnification simulator and the wide training distribution."""

from __future__ import annotations

import numpy as np
import pytest

from temseg.synth.lowmag import simulate_lowmag_frame, simulate_wide_frame


def test_lowmag_frames_are_reproducible_and_well_formed():
    a = simulate_lowmag_frame("Au", (96, 128), 3)
    b = simulate_lowmag_frame("Au", (96, 128), 3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.image.shape == a.mask.shape == (96, 128)
    assert a.image.dtype == np.uint16 and set(np.unique(a.mask)) <= {0, 1}
    assert a.metadata["material"] == "Au" and "pixel_nm" not in a.metadata
    with pytest.raises(ValueError, match="unknown material"):
        simulate_lowmag_frame("Pt", 64, 0)


def test_particles_are_darker_in_bright_field_and_brighter_in_dark_field():
    signs = {True: [], False: []}
    for seed in range(40):
        frame = simulate_lowmag_frame("Au", 128, seed)
        if frame.mask.mean() < 0.02 or frame.mask.mean() > 0.98:
            continue
        image = frame.image.astype(float)
        inside, outside = image[frame.mask > 0].mean(), image[frame.mask == 0].mean()
        signs[frame.metadata["dark_field"]].append(inside > outside)
    assert len(signs[False]) >= 10 and len(signs[True]) >= 2
    assert np.mean(signs[False]) < 0.1  # bright field: particles absorb
    assert np.mean(signs[True]) > 0.9  # dark field: particles scatter into the detector


def test_wide_frames_mix_regimes_without_a_pixel_size():
    regimes = set()
    for seed in range(12):
        frame = simulate_wide_frame("CdSe", 64, seed)
        regimes.add(frame.metadata["regime"])
        assert "pixel_nm" not in frame.metadata and frame.image.shape == (64, 64)
        if frame.metadata["regime"] == "hrtem":
            assert 0.02 <= frame.metadata["drawn_pixel_nm"] <= 0.2
    assert regimes == {"lowmag", "hrtem"}
