"""Thresholding, particle statistics and scores on masks with known answers."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from temseg import segment
from temseg.segment import (
    BOX_WALK_MAX_COMPONENTS,
    Particle,
    binarize,
    confusion,
    find_particles,
    min_particle_area_px,
    scores,
    segment_mask,
    segment_probability,
)


def two_squares() -> np.ndarray:
    """64 x 64 mask: a 10 x 10 square inside, a 6 x 14 block touching the right edge."""
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:20] = 1
    mask[40:46, 50:64] = 1
    return mask


def test_two_squares_statistics_in_pixels_and_nm() -> None:
    inner, edge = find_particles(two_squares(), pixel_nm=0.5)
    assert (inner.area_px, edge.area_px) == (100, 84)
    assert inner.centroid == pytest.approx((14.5, 14.5))
    assert edge.centroid == pytest.approx((42.5, 56.5))
    assert inner.bbox == (10, 10, 20, 20)
    assert edge.bbox == (40, 50, 46, 64)
    assert inner.equiv_diameter_px == pytest.approx(math.sqrt(400 / math.pi))
    assert edge.equiv_diameter_px == pytest.approx(math.sqrt(4 * 84 / math.pi))
    assert inner.equiv_diameter_nm == pytest.approx(0.5 * math.sqrt(400 / math.pi))
    assert inner.area_nm2 == pytest.approx(25.0)
    assert edge.area_nm2 == pytest.approx(21.0)
    assert (inner.touches_border, edge.touches_border) == (False, True)
    assert {inner.label, edge.label} == {1, 2}


def test_without_pixel_size_nm_values_are_none() -> None:
    particles = find_particles(two_squares())
    assert all(p.area_nm2 is None and p.equiv_diameter_nm is None for p in particles)


@pytest.mark.parametrize(
    ("y0", "x0", "y1", "x1"), [(0, 30, 3, 33), (30, 0, 33, 3), (61, 30, 64, 33), (30, 61, 33, 64)]
)
def test_touches_each_border(y0: int, x0: int, y1: int, x1: int) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[y0:y1, x0:x1] = 1
    (particle,) = find_particles(mask)
    assert particle.touches_border
    assert particle.bbox == (y0, x0, y1, x1)


def test_diagonal_pixels_are_one_particle() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[3, 3] = mask[4, 4] = 1
    (particle,) = find_particles(mask)
    assert particle.area_px == 2
    assert particle.centroid == pytest.approx((3.5, 3.5))
    assert particle.bbox == (3, 3, 5, 5)


def test_pixels_apart_are_two_particles() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[3, 3] = mask[3, 5] = 1
    assert len(find_particles(mask)) == 2


def test_min_area_drops_small_components() -> None:
    mask = two_squares()
    mask[60, 2] = 1
    assert len(find_particles(mask)) == 3
    kept = find_particles(mask, min_area_px=50)
    assert sorted(p.area_px for p in kept) == [84, 100]


def test_empty_mask_has_no_particles() -> None:
    assert find_particles(np.zeros((16, 16), np.uint8)) == []


def test_binarize_is_inclusive_and_checks_threshold() -> None:
    probability = np.array([[0.1, 0.5], [0.50001, 0.9]], np.float32)
    mask = binarize(probability, 0.5)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[0, 1], [1, 1]])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            binarize(probability, bad)


def test_segment_probability() -> None:
    probability = two_squares().astype(np.float32) * 0.8 + 0.1
    seg = segment_probability(probability, 0.5, pixel_nm=2.0)
    np.testing.assert_array_equal(seg.mask, two_squares())
    assert seg.threshold == 0.5
    assert seg.n_particles == 2
    assert seg.area_fraction == pytest.approx(184 / 64**2)
    assert seg.particles[0].equiv_diameter_nm == pytest.approx(2 * math.sqrt(400 / math.pi))
    assert segment_probability(probability, 0.95).n_particles == 0
    small_dropped = segment_probability(probability, 0.5, min_area_px=90)
    assert small_dropped.n_particles == 1  # the 6 x 14 block dropped; the fraction keeps it
    assert small_dropped.area_fraction == pytest.approx(184 / 64**2)


def test_particle_to_dict_is_json_ready() -> None:
    (particle,) = find_particles(two_squares()[:32], pixel_nm=0.1)
    data = particle.to_dict()
    assert data["bbox"] == [10, 10, 20, 20]
    assert data["centroid"] == pytest.approx([14.5, 14.5])
    assert data["area_px"] == 100
    assert list(data) == [f.name for f in dataclasses.fields(Particle)]  # every field, in order
    json.dumps(data)


def test_scores_on_known_masks() -> None:
    truth = np.zeros((4, 4), np.uint8)
    truth[0, :3] = truth[1, :3] = 1  # 6 pixels
    pred = np.zeros((4, 4), np.uint8)
    pred[0, :3] = 1
    pred[3, 3] = 1  # 3 true positives, 1 false positive, 3 false negatives
    assert confusion(pred, truth) == (3, 1, 3)
    result = scores(pred, truth)
    assert result["dice"] == pytest.approx(0.6)
    assert result["precision"] == pytest.approx(0.75)
    assert result["recall"] == pytest.approx(0.5)
    assert scores(truth, truth) == {"dice": 1.0, "precision": 1.0, "recall": 1.0}


def test_scores_with_empty_masks() -> None:
    empty = np.zeros((4, 4), np.uint8)
    full = np.ones((4, 4), np.uint8)
    assert scores(empty, empty) == {"dice": 1.0, "precision": 1.0, "recall": 1.0}
    assert scores(empty, full) == {"dice": 0.0, "precision": 0.0, "recall": 0.0}
    assert scores(full, empty) == {"dice": 0.0, "precision": 0.0, "recall": 0.0}


@pytest.mark.parametrize(
    ("fill", "grow", "by_runs"), [(0.002, True, True), (0.05, True, False), (0.1, False, False)]
)  # tens, hundreds and thousands of components: run by run, scipy's box walk and single pass
def test_particles_match_a_pixel_by_pixel_count(fill: float, grow: bool, by_runs: bool) -> None:
    rng = np.random.default_rng(int(fill * 1000))
    mask = rng.random((160, 200)) < fill
    mask = (ndimage.binary_dilation(mask) if grow else mask).astype(np.uint8)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    assert (n > BOX_WALK_MAX_COMPONENTS) == (not grow)
    runs = segment._runs(mask > 0)[0].size
    assert (runs <= mask.size * segment.RUNS_MAX_PER_PIXEL) == by_runs
    particles = find_particles(mask, min_area_px=3)
    expected = []
    for i in range(1, n + 1):
        ys, xs = np.nonzero(labels == i)
        if ys.size >= 3:
            bbox = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
            expected.append((ys.size, ys.mean(), xs.mean(), bbox))
    assert len(particles) == len(expected) > 0
    for p, (area, cy, cx, bbox) in zip(particles, expected, strict=True):
        assert p.area_px == area and p.bbox == tuple(int(v) for v in bbox)
        assert p.centroid == pytest.approx((cy, cx), abs=1e-9)


def test_box_walk_and_single_pass_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    mask = ndimage.binary_dilation(rng.random((256, 256)) < 0.01).astype(np.uint8)
    n = ndimage.label(mask, structure=np.ones((3, 3), bool))[1]
    assert 10 < n <= BOX_WALK_MAX_COMPONENTS
    monkeypatch.setattr(segment, "RUNS_MAX_PER_PIXEL", 0)  # label with scipy
    by_box = find_particles(mask, pixel_nm=0.05)
    monkeypatch.setattr(segment, "BOX_WALK_MAX_COMPONENTS", 0)  # force the single pass
    by_pass = find_particles(mask, pixel_nm=0.05)
    assert len(by_box) == len(by_pass) == n
    for a, b in zip(by_box, by_pass, strict=True):
        assert (a.label, a.area_px, a.bbox) == (b.label, b.area_px, b.bbox)
        assert a.centroid == pytest.approx(b.centroid, abs=1e-9)


def _sparse_blobs(shape: tuple[int, int], seed: int, blobs: int = 150) -> np.ndarray:
    """A 0/1 mask with ``blobs`` blobs of many sizes and some specks, some on the borders."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, bool)
    seeds[rng.integers(0, shape[0], blobs), rng.integers(0, shape[1], blobs)] = True
    seeds[0, rng.integers(0, shape[1], 3)] = seeds[rng.integers(0, shape[0], 3), -1] = True
    grown = ndimage.binary_dilation(seeds, iterations=6) | (rng.random(shape) < 0.00005)
    grown[100:110, 100:140] = np.eye(10, 40, dtype=bool)  # a diagonal line across blocks
    grown[200:400, 300:305] = grown[395:400, 300:500] = True  # an L whose window ...
    grown[250:260, 400:410] = True  # ... holds a particle of its own
    return grown.astype(np.uint8)


@pytest.mark.parametrize(
    ("shape", "seed", "blobs", "box_walk"),
    [
        ((1100, 1050), 1, 150, True),
        ((1024, 1024), 2, 150, True),
        ((1024, 1024), 3, 150, False),
        ((512, 600), 4, 40, True),
        ((37, 53), 5, 3, True),
    ],
)
def test_labelling_run_by_run_finds_what_scipy_finds(
    shape: tuple[int, int],
    seed: int,
    blobs: int,
    box_walk: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mask = _sparse_blobs(shape, seed, blobs) if shape[0] > 64 else _speckled(shape, seed)
    starts, _, _ = segment._runs(mask > 0)
    assert starts.size <= mask.size * segment.RUNS_MAX_PER_PIXEL  # labelled run by run
    by_runs = find_particles(mask, pixel_nm=0.05, min_area_px=2)
    monkeypatch.setattr(segment, "RUNS_MAX_PER_PIXEL", 0)  # label with scipy
    if not box_walk:
        monkeypatch.setattr(segment, "BOX_WALK_MAX_COMPONENTS", 0)  # measure in one pass
    by_scipy = find_particles(mask, pixel_nm=0.05, min_area_px=2)
    assert len(by_runs) == len(by_scipy) > blobs
    for a, b in zip(by_runs, by_scipy, strict=True):
        assert (a.label, a.area_px, a.bbox, a.touches_border) == (
            b.label,
            b.area_px,
            b.bbox,
            b.touches_border,
        )
        assert a.centroid == pytest.approx(b.centroid, abs=1e-9)


def _speckled(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A small 0/1 mask of single pixels and pairs, a few on each border."""
    rng = np.random.default_rng(seed)
    mask = (rng.random(shape) < 0.03).astype(np.uint8)
    mask[0, ::9] = mask[-1, ::7] = mask[::5, 0] = mask[::6, -1] = 1
    return mask


@pytest.mark.parametrize("band_rows", [1, 7, 256, 5000])
def test_runs_found_band_by_band_are_the_runs_of_the_whole_mask(
    band_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = _sparse_blobs((700, 650), 6) > 0
    monkeypatch.setattr(segment, "RUN_BAND_ROWS", band_rows)
    starts, stops, padded_width = segment._runs(binary)
    rows, col0 = np.divmod(starts, padded_width)
    expected = []  # (row, first column, column after the last) of each run, row by row
    for y, row in enumerate(binary):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        expected += [(y, int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2], strict=True)]
    col1 = stops - rows * padded_width - 1
    got = list(zip(rows.tolist(), (col0 - 1).tolist(), col1.tolist(), strict=True))
    assert got == expected
    assert int((stops - starts).sum()) == int(binary.sum())


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(bool, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)),
    st.integers(1, 9),
)
def test_any_mask_labelled_run_by_run_is_labelled_as_scipy_labels_it(
    binary: np.ndarray, band_rows: int
) -> None:
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    original = segment.RUN_BAND_ROWS
    segment.RUN_BAND_ROWS = band_rows
    try:
        starts, stops, padded_width = segment._runs(binary)
    finally:
        segment.RUN_BAND_ROWS = original
    areas, rows, cols, boxes = segment._measure_runs(starts, stops, padded_width)
    assert (
        areas.tolist() == ndimage.sum_labels(binary, labels, range(1, n + 1)).astype(int).tolist()
    )
    expected_boxes = [
        (b[0].start, b[1].start, b[0].stop, b[1].stop) for b in ndimage.find_objects(labels)
    ]
    assert boxes == expected_boxes
    if n:
        centroids = np.array(ndimage.center_of_mass(binary, labels, range(1, n + 1)))
        np.testing.assert_allclose(np.stack([rows, cols], axis=1), centroids, atol=1e-9)


def test_a_run_ending_a_row_does_not_join_the_next_rows_first_run() -> None:
    mask = np.zeros((4, 6), np.uint8)
    mask[0, 4:] = mask[1, :2] = 1  # consecutive in memory, apart in the image
    mask[3, 5] = 1
    particles = find_particles(mask)
    assert [(p.area_px, p.bbox) for p in particles] == [
        (2, (0, 4, 1, 6)),
        (2, (1, 0, 2, 2)),
        (1, (3, 5, 4, 6)),
    ]


def test_masks_of_many_runs_are_labelled_by_scipy_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    holes = np.ones((300, 320), np.uint8)
    holes[1::2, 1::2] = 0  # one component cut into many runs
    noise = (np.random.default_rng(9).random((300, 320)) < 0.5).astype(np.uint8)
    for mask in (holes, noise):
        assert segment._runs(mask > 0)[0].size > mask.size * segment.RUNS_MAX_PER_PIXEL
        by_scipy = find_particles(mask)
        monkeypatch.setattr(segment, "RUNS_MAX_PER_PIXEL", 1.0)  # label run by run
        by_runs = find_particles(mask)
        monkeypatch.undo()
        assert [(p.label, p.area_px, p.bbox) for p in by_runs] == [
            (p.label, p.area_px, p.bbox) for p in by_scipy
        ]
        for a, b in zip(by_runs, by_scipy, strict=True):
            assert a.centroid == pytest.approx(b.centroid, abs=1e-9)
    assert len(find_particles(holes)) == 1


def test_large_empty_and_single_pixel_masks() -> None:
    mask = np.zeros((1024, 1100), np.uint8)
    assert find_particles(mask) == []
    assert find_particles(np.zeros((0, 5), np.uint8)) == find_particles(np.zeros((5, 0))) == []
    mask[1023, 1099] = 1
    (corner,) = find_particles(mask)
    assert (corner.bbox, corner.area_px, corner.touches_border) == (
        (1023, 1099, 1024, 1100),
        1,
        True,
    )


@pytest.mark.parametrize("shape", [(1100, 1050), (37, 53)])  # sides not multiples of 8
def test_packed_mask_measures_as_the_mask_itself(shape: tuple[int, int]) -> None:
    mask = _sparse_blobs(shape, 4) if shape[0] > 64 else (np.arange(37 * 53) % 7 == 0)
    binary = mask.reshape(shape) > 0
    packed = segment.measure_packed(np.packbits(binary), shape, 0.05, 2)
    assert packed == segment.measure_particles(binary, 0.05, 2)
    assert packed[1] == binary.sum()


def test_segment_probability_measures_with_the_callers_function() -> None:
    probability = two_squares() * np.float32(0.8)
    calls = []

    def measure(binary: np.ndarray, pixel_nm: float | None, min_area_px: int):
        calls.append((binary.dtype, binary.shape, pixel_nm, min_area_px))
        return segment.measure_particles(binary, pixel_nm, min_area_px)

    got = segment_probability(probability, 0.5, 0.5, 90, measure=measure)
    assert calls == [(np.dtype(bool), (64, 64), 0.5, 90)]
    assert [p.area_px for p in got.particles] == [100]
    assert got.area_fraction == pytest.approx(184 / 64**2)


def test_segment_mask_gives_what_segment_probability_gives() -> None:
    rng = np.random.default_rng(7)
    probability = ndimage.gaussian_filter(rng.random((120, 150)), 3).astype(np.float32)
    probability = (probability - probability.min()) / np.ptp(probability)
    whole = segment_probability(probability, 0.6, pixel_nm=0.2, min_area_px=3)
    mask = (probability >= 0.6).astype(np.uint8)
    given = segment_mask(mask, 0.6, pixel_nm=0.2, min_area_px=3)
    assert whole.n_particles > 1
    assert given.particles == whole.particles
    assert given.area_fraction == whole.area_fraction and given.threshold == 0.6
    np.testing.assert_array_equal(given.mask, whole.mask)
    with pytest.raises(ValueError, match="uint8 0/1 or bool"):
        segment_mask(probability, 0.6)


def test_components_below_the_smallest_diameter_are_not_particles() -> None:
    mask = np.zeros((100, 100), np.uint8)
    mask[10:12, 10:12] = 1  # 4 px
    mask[40:70, 40:70] = 1  # 900 px
    fine = segment_mask(mask, 0.5, 0.05, min_diameter_nm=1.0)  # 0.11 and 1.7 nm across
    assert [p.area_px for p in fine.particles] == [900]
    assert fine.area_fraction == 904 / mask.size  # the speck stays in the mask
    assert np.array_equal(fine.mask, mask)
    coarse = segment_mask(mask, 0.5, 0.5, min_diameter_nm=1.0)  # 1.1 and 17 nm across
    assert [p.area_px for p in coarse.particles] == [4, 900]
    unknown = segment_mask(mask, 0.5, None, min_diameter_nm=1.0)  # no pixel size: all count
    assert len(unknown.particles) == 2
    assert min_particle_area_px(0.05, 1.0) == 315 and min_particle_area_px(0.5, 0.0) == 1
