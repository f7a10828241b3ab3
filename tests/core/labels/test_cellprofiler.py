"""Each step of the CPJUMP1 CellProfiler re-implementation on small arrays, against what the CP 4.0.6 module does
(reference: shared/reference/jump_labels.md §1.3–1.6)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_li

from dinocell_core.labels.cellprofiler import (
    BadFieldError,
    CellProfilerParams,
    block_background,
    block_minimum,
    correct_illumination,
    cytoplasm,
    declump_shape,
    edt,
    fill_holes,
    fill_labeled_holes,
    filter_nuclei,
    gaussian_normalised,
    identify_cells,
    local_maxima,
    mce_threshold,
    secondary_seeds,
    segment_field,
    strel_disk,
    subtract_background,
)


def disk(shape: tuple[int, int], centre: tuple[float, float], r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r


def test_illumination_divide_rescales_and_clips() -> None:
    """CorrectIlluminationApply Divide after LoadData's 1/65535 rescale; <0 → 0 and >1 → 1."""
    raw = np.array([[0, 65535], [32768, 6554]], np.uint16)
    illum = np.array([[1.0, 2.0], [1.0, 0.5]], np.float32)
    out = correct_illumination(raw, illum)
    np.testing.assert_allclose(out, [[0.0, 0.5], [32768 / 65535, 2 * 6554 / 65535]], rtol=1e-6)
    assert correct_illumination(np.array([[65535]], np.uint16), np.array([[0.5]], np.float32))[0, 0] == 1.0
    with pytest.raises(BadFieldError, match="illumination function shape"):
        correct_illumination(raw, np.ones((3, 3), np.float32))


@pytest.mark.parametrize("sigma", [3 / 1.3488, 50 / 2.35])
def test_mask_normalised_gaussian_matches_scipy_constant_border(sigma: float) -> None:
    """centrosome smooth_with_function_and_mask with gaussian_filter(mode='constant') and a full mask."""
    img = np.random.default_rng(0).random((90, 70)).astype(np.float32)
    ref = ndi.gaussian_filter(img, sigma, mode="constant") / ndi.gaussian_filter(np.ones_like(img), sigma,
                                                                                  mode="constant")
    np.testing.assert_allclose(gaussian_normalised(img, sigma), ref, atol=2e-5)
    flat = np.full((40, 40), 0.3, np.float32)  # normalisation: a flat image stays flat up to the borders
    np.testing.assert_allclose(gaussian_normalised(flat, sigma), 0.3, atol=1e-5)


def test_block_minimum_replaces_each_block_by_its_minimum() -> None:
    img = np.arange(36, dtype=np.float32).reshape(6, 6)
    out = block_minimum(img, 3)
    assert out[0, 0] == out[2, 2] == 0 and out[0, 3] == out[2, 5] == 3
    assert out[3, 0] == out[5, 2] == 18 and out[3, 3] == out[5, 5] == 21
    odd = block_minimum(np.arange(35, dtype=np.float32).reshape(7, 5), 3)  # partial blocks at the far edges
    assert odd.shape == (7, 5) and odd[6, 4] == 33 and odd[6, 0] == 30


def test_background_subtraction_removes_smooth_background_keeps_spots() -> None:
    """Background method (block 30 minima, Gaussian 50/2.35) then Subtract, clipped at 0."""
    _, xx = np.mgrid[:120, :120]
    bg = (0.01 + 0.00005 * xx).astype(np.float32)
    img = bg.copy()
    spot = disk(img.shape, (60, 60), 6)
    img[spot] += 0.2
    out = subtract_background(img, 30, 50.0)
    assert out.min() >= 0.0
    assert abs(float(out[spot].mean()) - 0.2) < 0.01 and float(out[~spot].mean()) < 0.002


def test_mce_threshold_is_li_times_correction_clamped() -> None:
    rng = np.random.default_rng(1)
    img = np.concatenate([rng.normal(0.02, 0.003, 5000), rng.normal(0.2, 0.02, 1000)]).astype(np.float32)
    li = float(threshold_li(img))
    assert mce_threshold(img, 1.25, (0.014, 1.0)) == pytest.approx(li * 1.25)
    assert mce_threshold(img * 0.01, 1.25, (0.014, 1.0)) == 0.014  # lower bound
    assert mce_threshold(img, 1.0, (0.005, 0.014)) == 0.014  # upper bound (the cells' setting)


def test_strel_disk_is_centrosomes_disk() -> None:
    d = strel_disk(7.5)  # minimum maxima distance 8 → radius 7.5
    assert d.shape == (15, 15) and d.sum() == sum(1 for y in range(-7, 8) for x in range(-7, 8)
                                                   if x * x + y * y <= 56.25)
    assert strel_disk(1.0).sum() == 5


def _brute_local_maxima(img: np.ndarray, labels: np.ndarray, fp: np.ndarray) -> np.ndarray:
    r = fp.shape[0] // 2
    out = np.zeros(img.shape, bool)
    for y, x in zip(*np.nonzero(labels)):
        best = True
        for dy, dx in zip(*np.nonzero(fp)):
            yy, xx = y + dy - r, x + dx - r
            if 0 <= yy < img.shape[0] and 0 <= xx < img.shape[1] and labels[yy, xx] == labels[y, x]:
                best &= img[yy, xx] <= img[y, x]
        out[y, x] = best
    return out


def test_local_maxima_only_compare_within_the_same_object() -> None:
    """is_local_maximum: a maximum of a dim object next to a bright one is still a maximum."""
    rng = np.random.default_rng(2)
    labels = np.zeros((40, 40), np.int32)
    labels[5:20, 5:18] = 1
    labels[5:20, 20:35] = 2  # 2 px gap: inside each other's footprint
    labels[25:38, 8:30] = 3
    img = rng.random((40, 40)).astype(np.float32) * np.where(labels == 2, 10, 1)
    fp = strel_disk(3.5)
    np.testing.assert_array_equal(local_maxima(img, labels, fp), _brute_local_maxima(img, labels, fp))


def test_shape_declumping_splits_two_touching_round_nuclei_not_one() -> None:
    shape = (60, 90)
    two = disk(shape, (30, 30), 14) | disk(shape, (30, 56), 14)
    assert declump_shape(two, 8.0).max() == 2
    assert declump_shape(disk(shape, (30, 40), 14), 8.0).max() == 1
    # maxima closer than the minimum distance merge: a slightly elongated blob stays one object
    peanut = disk(shape, (30, 40), 12) | disk(shape, (30, 45), 12)
    assert declump_shape(peanut, 8.0).max() == 1
    assert declump_shape(np.zeros(shape, bool), 8.0).max() == 0


def test_border_and_size_filters_use_the_area_of_the_diameter_range() -> None:
    """Discard objects touching the border, and objects with area outside π·10²/4 … π·75²/4 px."""
    lab = np.zeros((120, 120), np.int32)
    lab[0:10, 50:60] = 1                       # touches the border, big enough
    lab[20:26, 20:33] = 2                      # 78 px < 78.54: too small
    lab[40:46, 20:33] = 3
    lab[46, 20] = 3                            # 79 px: kept
    lab[60:100, 40:100] = 4                    # 2400 px: kept
    nuclei, keep = filter_nuclei(lab, 10, 75)
    assert keep.tolist() == [False, False, False, True, True]
    assert nuclei.max() == 2 and (nuclei == 1).sum() == 79 and (nuclei == 2).sum() == 2400
    big = np.zeros((200, 200), np.int32)
    big[10:80, 10:80] = 1                      # 4900 px > 4418
    assert filter_nuclei(big, 10, 75)[0].max() == 0


def test_secondary_seeds_keep_border_nuclei_and_drop_small_ones() -> None:
    unedited = np.zeros((50, 50), np.int32)
    unedited[0:8, 10:20] = 1     # touches border: removed from Nuclei but still a seed
    unedited[20:23, 20:23] = 2   # too small: not a seed
    unedited[30:45, 30:45] = 3
    nuclei, _ = filter_nuclei(unedited, 10, 75)
    seeds = secondary_seeds(unedited, nuclei)
    assert set(np.unique(seeds)) == {0, 1, 3}


def test_cells_watershed_on_rna_compete_and_take_their_nucleus_ids() -> None:
    shape = (60, 100)
    rna = np.full(shape, 0.002, np.float32)
    body = disk(shape, (30, 30), 20) | disk(shape, (30, 70), 20) | disk(shape, (3, 50), 14)
    rna[body] = 0.03
    rna[30, 47:53] = 0.01  # dimmer valley between the two cells
    unedited = np.zeros(shape, np.int32)
    unedited[disk(shape, (30, 30), 7)] = 1
    unedited[disk(shape, (30, 70), 7)] = 2
    unedited[0:5, 46:55] = 3  # border nucleus: seeds a cell that is dropped afterwards
    nuclei, _ = filter_nuclei(unedited, 10, 75)
    cells, t = identify_cells(rna, unedited, nuclei, CellProfilerParams())
    assert t == pytest.approx(min(max(float(threshold_li(rna)), 0.005), 0.014))  # unsmoothed, factor 1
    assert set(np.unique(cells)) == {0, 1, 2}
    assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])  # cell i holds nucleus i
    assert (cells == 1).sum() > 3 * (nuclei == 1).sum()
    assert np.all(cells[0:5, 46:55] == 0)  # the border cell's territory is not handed to the others
    assert np.all(cells[~body & (unedited == 0)] == 0)


def test_fill_labeled_holes_fills_only_holes_enclosed_by_one_object() -> None:
    lab = np.zeros((30, 30), np.int32)
    lab[2:12, 2:12] = 1
    lab[5:8, 5:8] = 0            # hole of object 1
    lab[15:25, 15:20] = 2
    lab[15:25, 20:25] = 3
    lab[18:21, 19:21] = 0        # hole between objects 2 and 3: stays
    lab[0:5, 20:28] = 4
    lab[0:2, 23:25] = 0          # notch open to the image edge: not a hole
    out = fill_labeled_holes(lab)
    assert np.all(out[5:8, 5:8] == 1) and np.all(out[18:21, 19:21] == 0) and np.all(out[0:2, 23:25] == 0)


def test_cytoplasm_is_cell_minus_nucleus_interior_keeping_the_rim() -> None:
    cells = np.zeros((15, 15), np.int32)
    cells[1:14, 1:14] = 1
    nuclei = np.zeros_like(cells)
    nuclei[4:11, 4:11] = 1
    cyto = cytoplasm(cells, nuclei)
    assert np.all(cyto[5:10, 5:10] == 0)                      # interior removed
    assert cyto[4, 7] == 1 and cyto[10, 10] == 1              # 1-px nuclear rim kept
    assert (cyto > 0).sum() == 13 * 13 - 5 * 5
    # centrosome's outline: a diagonal neighbour of another id makes a pixel outline; so does the image edge
    nuclei[10, 10] = 0                                        # (9, 9) now touches background diagonally only
    cyto = cytoplasm(cells, nuclei)
    assert cyto[9, 9] == 1 and cyto[9, 8] == 0 and cyto[8, 8] == 0
    edge = np.zeros((6, 6), np.int32)
    edge[0:4, 0:4] = 2
    assert cytoplasm(np.full((6, 6), 7, np.int32), edge)[0, 1] == 7  # nucleus pixel on the image edge: kept
    assert cytoplasm(np.full((6, 6), 7, np.int32), edge)[1, 1] == 0


def test_blank_and_saturated_fields_are_refused_with_the_reason() -> None:
    z = np.zeros((64, 64), np.uint16)
    rna = np.random.default_rng(0).integers(200, 400, (64, 64)).astype(np.uint16)
    with pytest.raises(BadFieldError, match=r"DNA \(ch5\) image is blank"):
        segment_field(z, rna)
    sat = rna.copy()
    sat[:20] = 65535
    with pytest.raises(BadFieldError, match=r"RNA \(ch3\) image is saturated \(31% of pixels"):
        segment_field(rna, sat)
    with pytest.raises(BadFieldError, match="one shape"):
        segment_field(rna, rna[:32])


def test_block_space_background_equals_block_minimum_then_gaussian() -> None:
    """The fast path of the Background method is the same function as its definition (partial tiles included)."""
    img = np.random.default_rng(3).random((97, 130)).astype(np.float32)
    for block, sigma in ((30, 50 / 2.35), (8, 3.0)):
        slow = gaussian_normalised(block_minimum(img, block), sigma)
        np.testing.assert_allclose(block_background(img, block, sigma), slow, atol=2e-5)


def test_cells_watershed_equals_skimage_on_the_whole_mask() -> None:
    """Running the flood only in mask parts with two or more seeds gives skimage's whole-image watershed."""
    from skimage.segmentation import watershed

    rng = np.random.default_rng(4)
    shape = (120, 160)
    rna = ndi.gaussian_filter(rng.random(shape), 4).astype(np.float32) * 0.02
    seeds = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(rng.integers(10, 110, (14, 2)), start=1):
        seeds[y - 3 : y + 3, x - 3 : x + 3] = i
    params = CellProfilerParams(cells_bounds=(0.0, 1.0))
    cells, t = identify_cells(rna, seeds, seeds, params)
    ref = watershed(1.0 - rna, seeds, mask=(rna >= t) | (seeds > 0), connectivity=2)
    ref = fill_labeled_holes(ref)
    assert np.mean(cells == ref) > 0.999


def test_fill_holes_and_edt_equal_scipy() -> None:
    rng = np.random.default_rng(5)
    binary = ndi.gaussian_filter(rng.random((80, 90)), 2) > 0.5
    np.testing.assert_array_equal(fill_holes(binary), ndi.binary_fill_holes(binary))
    np.testing.assert_allclose(edt(binary), ndi.distance_transform_edt(binary), atol=1e-4)
