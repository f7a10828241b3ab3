"""Each step of the CPJUMP1 CellProfiler re-implementation on small arrays, against what the CP 4.0.6 module does
(reference: shared/reference/jump_labels.md §1.3–1.6), and the whole field against a reference pipeline built here
step by step from the documented algorithm (CellProfiler 4.0.6 modules, centrosome 1.2.0) with plain
SciPy/scikit-image calls: whole-image filters and watersheds, brute-force maxima, a literal hole-filling walk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_li
from skimage.segmentation import watershed

from dinocell_core.cli import main
from dinocell_core.io.tiffio import read_tiff
from dinocell_core.jump.index import index_fields, join_path
from dinocell_core.jump.preprocess import illumination_path
from dinocell_core.labels.cellprofiler import (
    BadFieldError,
    CellProfilerParams,
    block_background,
    block_grid,
    correct_illumination,
    cytoplasm,
    declump_shape,
    edt,
    fill_holes,
    fill_labeled_holes,
    filter_nuclei,
    identify_cells,
    local_maxima,
    mce_threshold,
    secondary_seeds,
    segment_field,
    smoothed_at_least,
    strel_disk,
    subtract_background,
)
from dinocell_core.labels.store import LabelStore
from dinocell_core.synthetic.fixture import make_field, make_jump_fixture

EPS = np.finfo(float).eps
EIGHT = np.ones((3, 3), bool)


def disk(shape: tuple[int, int], centre: tuple[float, float], r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r


def test_illumination_divide_rescales_and_clips() -> None:
    """CorrectIlluminationApply Divide after LoadData's 1/65535 rescale; <0 → 0 and >1 → 1."""
    raw = np.array([[0, 65535], [32768, 6554]], np.uint16)
    illum = np.array([[1.0, 2.0], [1.0, 0.5]], np.float32)
    out = correct_illumination(raw, illum)
    np.testing.assert_allclose(out, [[0.0, 0.5], [32768 / 65535, 2 * 6554 / 65535]], rtol=1e-6)
    # python-bioformats rescales by a float32 division (not a multiplication by 1/65535), then CellProfiler divides
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    np.testing.assert_array_equal(correct_illumination(every, None), every.astype(np.float32) / np.float32(65535))
    assert correct_illumination(np.array([[65535]], np.uint16), np.array([[0.5]], np.float32))[0, 0] == 1.0
    with pytest.raises(BadFieldError, match="illumination function shape"):
        correct_illumination(raw, np.ones((3, 3), np.float32))


@pytest.mark.parametrize("sigma", [3 / 1.3488, 50 / 2.35])
def test_smoothed_foreground_is_the_threshold_modules_bit_for_bit(sigma: float) -> None:
    """centrosome smooth_with_function_and_mask(img, gaussian_filter(mode='constant'), full mask) ≥ t, with t put
    exactly on smoothed values (and one float64 step either side), so the last bit decides those pixels."""
    rng = np.random.default_rng(0)
    img = (ndi.gaussian_filter(rng.random((90, 70)), 2) * 0.05).astype(np.float32)
    img[rng.random(img.shape) < 0.1] = 0
    ref = _ref_smooth(img, sigma)
    for t in [float(np.median(ref)), *ref.ravel()[rng.choice(ref.size, 15)].tolist()]:
        for at in (t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf)):
            np.testing.assert_array_equal(smoothed_at_least(img, sigma, at), ref >= at)
    np.testing.assert_array_equal(smoothed_at_least(img, 0.0, 0.02), img >= 0.02)  # scale 0: no smoothing


def test_block_grid_is_centrosomes_equal_blocks_not_fixed_tiles() -> None:
    """centrosome's ``block``: ⌊n/block⌋ blocks per axis, pixel i in block int(i · n_blocks / n)."""
    # 7 px, block 3: two blocks of 4 and 3 px (30-px-style tiles would give 3 + 3 + 1)
    assert block_grid(7, 3).tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert block_grid(20, 30).tolist() == [0] * 20  # at least one block
    np.testing.assert_array_equal(block_grid(1080, 30), np.arange(1080) // 30)  # CPJUMP1's fields: 36 even blocks
    sizes = np.bincount(block_grid(512, 30))  # 17 blocks: 2 of 31 px, 15 of 30 px
    assert sizes.size == 17 and sorted(sizes.tolist()) == [30] * 15 + [31] * 2 and sizes[0] == 31


def test_background_minima_use_the_uneven_blocks() -> None:
    """With a one-tap Gaussian (σ 0.1) the background is the block-minimum image itself, on the grid above."""
    img = np.arange(49, dtype=np.float32)[::-1].reshape(7, 7).copy()  # minimum of a block: its bottom-right pixel
    expect = np.empty((7, 7), np.float32)
    for ys, y_min in ((slice(0, 4), 3), (slice(4, 7), 6)):
        for xs, x_min in ((slice(0, 4), 3), (slice(4, 7), 6)):
            expect[ys, xs] = img[y_min, x_min]
    np.testing.assert_array_equal(block_background(img, 3, 0.1), expect)


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


@pytest.mark.parametrize("shape", [(512, 512), (97, 130), (1080, 1080)])
def test_block_space_background_is_the_background_method_bit_for_bit(shape: tuple[int, int]) -> None:
    """The fast path of the Background method equals its definition: block minima (ndi.minimum on centrosome's
    block labels) as a float32 image, then the mask-normalised Gaussian, stored as float32."""
    img = (ndi.gaussian_filter(np.random.default_rng(3).random(shape), 5) * 0.05).astype(np.float32)
    for block, sigma in ((30, 50 / 2.35), (8, 3.0)):
        np.testing.assert_array_equal(block_background(img, block, sigma), _ref_background(img, block, sigma))


def test_cells_watershed_equals_skimage_on_the_whole_mask() -> None:
    """Running the flood only in mask parts with two or more seeds gives skimage's whole-image watershed."""
    rng = np.random.default_rng(4)
    shape = (120, 160)
    rna = (ndi.gaussian_filter(rng.random(shape), 4) * 0.02).astype(np.float32)
    seeds = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(rng.integers(10, 110, (14, 2)), start=1):
        seeds[y - 3 : y + 3, x - 3 : x + 3] = i
    params = CellProfilerParams(cells_bounds=(0.0, 1.0))
    cells, t = identify_cells(rna, seeds, seeds, params)
    ref = watershed(1.0 - rna, seeds, mask=(rna >= t) | (seeds > 0), connectivity=2)
    np.testing.assert_array_equal(cells, _ref_fill_labeled_holes(ref))


def test_fill_holes_and_edt_equal_scipy_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    for shape, s in (((80, 90), 2), ((240, 200), 3), ((1080, 1080), 6)):
        binary = ndi.gaussian_filter(rng.random(shape), s) > 0.5
        np.testing.assert_array_equal(fill_holes(binary), ndi.binary_fill_holes(binary))
        np.testing.assert_array_equal(edt(binary), ndi.distance_transform_edt(binary))
        if shape[0] < 1000:  # IdentifyPrimaryObjects fills with fill_labeled_holes(8-connected labels) > 0: the same
            np.testing.assert_array_equal(fill_holes(binary), _ref_fill_labeled_holes(ndi.label(binary, EIGHT)[0]) > 0)


# ------------------------------------------------------------------- (c) centrosome's fill_labeled_holes

def _holes_case() -> np.ndarray:
    lab = np.zeros((24, 40), np.int32)
    lab[1:6, 1:7] = 1
    lab[1:3, 4:7] = 2             # 2 reaches the background; it touches the hole below only diagonally
    lab[3, 3] = 0                 # hole of 1 (its 4 neighbours are 1; (2, 4) is 2)
    lab[1:12, 14:26] = 3
    lab[3:10, 17:23] = 4          # 4 enclosed by 3
    lab[5:8, 19:21] = 0           # hole inside 4 (4 is inside 3)
    lab[3:10, 23] = 0             # hole between 3 and the enclosed 4
    lab[14:23, 1:9] = 5
    lab[14:23, 9:17] = 6
    lab[17:19, 8:10] = 0          # hole between two cells that reach the background: stays
    lab[14:24, 20:30] = 7
    lab[21:24, 24:26] = 0         # notch open to the image edge: not a hole
    return lab


def test_fill_labeled_holes_follows_centrosome() -> None:
    """4-neighbour contact only; an enclosed cell is no second neighbour, and a hole inside it takes the id of the
    cell around it (centrosome's walk); a hole between two cells or open to the edge stays."""
    lab = _holes_case()
    out = fill_labeled_holes(lab)
    assert out[3, 3] == 1                   # 2 touches it diagonally only: a hole of 1
    assert np.all(out[3:10, 23] == 3)       # bordered by 3 and the enclosed 4: a hole of 3
    assert np.all(out[5:8, 19:21] == 3)     # inside 4, which is inside 3: CellProfiler gives it 3
    assert np.all(out[17:19, 8:10] == 0) and np.all(out[21:24, 24:26] == 0)
    assert np.array_equal(out[lab > 0], lab[lab > 0])  # objects never change
    np.testing.assert_array_equal(out, _ref_fill_labeled_holes(lab))


@pytest.mark.parametrize("seed", range(4))
def test_fill_labeled_holes_equals_the_literal_walk_on_random_cells(seed: int) -> None:
    """Watershed cells with speckled holes, nested cells and cells touching diagonally, against the walk."""
    rng = np.random.default_rng(seed)
    shape = (150, 170)
    seeds = np.zeros(shape, np.int32)
    for i, (y, x) in enumerate(rng.integers(0, 150, (25, 2)), start=1):
        seeds[y, min(x, 169)] = i
    cells = watershed(ndi.gaussian_filter(rng.random(shape), 3), seeds, connectivity=2,
                      mask=ndi.gaussian_filter(rng.random(shape), 4) > 0.47)
    cells[rng.random(shape) < 0.04] = 0
    for k, (y, x) in enumerate(rng.integers(10, 140, (4, 2)), start=100):  # a cell inside a cell, with a hole
        cells[y - 6 : y + 6, x - 6 : x + 6] = int(cells[y, x]) or 1
        cells[y - 3 : y + 3, x - 3 : x + 3] = k
        cells[y, x] = 0
    np.testing.assert_array_equal(fill_labeled_holes(cells), _ref_fill_labeled_holes(cells))


# ------------------------------------------------------------------- (b) float64 declumping

def test_declumping_uses_float64_distances_and_jitter() -> None:
    """A 16-px-wide bar: its ridge is a plateau of equal distances that only CellProfiler's float64 jitter orders.
    Rounded to float32 the jitter ties on the ridge and adds a fifth seed; in float64 there are four."""
    binary = np.zeros((48, 96), bool)
    binary[13:29, 1:94] = True
    labels, _ = ndi.label(binary, EIGHT)
    dist = ndi.distance_transform_edt(binary) + np.random.RandomState(0).uniform(0, 0.001, binary.shape)
    fp = strel_disk(7.5)
    maxima = _ref_local_maxima(dist, labels, fp)
    assert ndi.label(maxima, EIGHT)[1] == 4
    as_f32 = _ref_local_maxima(dist.astype(np.float32), labels, fp)  # what float32 declumping saw
    assert ndi.label(as_f32, EIGHT)[1] == 5
    surface = -dist - (-dist).min()
    expect = watershed(surface, ndi.label(maxima, EIGHT)[0], mask=labels > 0, connectivity=2)
    np.testing.assert_array_equal(declump_shape(binary, 8.0), expect)


# ------------------------------------------------------------------- the whole field against the reference

@pytest.mark.parametrize("size, seed", [(512, 0), (1080, 1)])
def test_jump_label_equals_the_reference_pipeline_pixel_for_pixel(tmp_path: Path, size: int, seed: int) -> None:
    """``jump label`` (CPJUMP1 defaults) on a synthetic field with illumination functions writes nuclei, cells and
    cytoplasm equal, every pixel, to the CP 4.0.6 pipeline built step by step below from the tree's own files.
    At 512 px the background blocks are uneven (17 of 30/31 px); at 1080 they are 36 of 30."""
    info = make_jump_fixture(tmp_path / "tree", plates=1, wells=1, sites=1, size=size, seed=seed, edge_cases=False)
    assert main(["jump", "label", str(info.root), "-o", str(tmp_path / "labels"), "--workers", "1",
                 "--qc-fields", "0"]) == 0
    store = LabelStore.open(tmp_path / "labels")
    (field,) = index_fields(info.root, channels=(3, 5)).fields
    dna, rna = (read_tiff(field.path(info.root, ch)) for ch in (5, 3))
    illum_dna, illum_rna = (np.load(join_path(str(info.root), illumination_path(field, ch))) for ch in (5, 3))
    nuclei, cells, cyto, _, _ = _reference_segmentation(dna, rna, illum_dna, illum_rna)
    assert nuclei.max() > 50 and (illum_dna.max() > 1.2)
    (row,) = store.rows
    np.testing.assert_array_equal(store.read(row, "nuclei"), nuclei)
    np.testing.assert_array_equal(store.read(row, "cells"), cells)
    np.testing.assert_array_equal(store.read(row, "cytoplasm"), cyto)


@pytest.mark.parametrize("size, seed, phenotype", [(700, 2, "punctate"), (333, 3, "tubular")])
def test_segment_field_equals_the_reference_pipeline_pixel_for_pixel(size: int, seed: int, phenotype: str) -> None:
    """The same without illumination functions, at other sizes (23 blocks of 30–31 px; 11 of 30–31), and the two
    thresholds to the last bit."""
    ch, _, _ = make_field(size, seed, phenotype)
    seg = segment_field(ch[4], ch[2])
    nuclei, cells, cyto, t_n, t_c = _reference_segmentation(ch[4], ch[2], None, None)
    assert nuclei.max() > 20
    assert (seg.nuclei_threshold, seg.cells_threshold) == (t_n, t_c)
    np.testing.assert_array_equal(seg.nuclei, nuclei)
    np.testing.assert_array_equal(seg.cells, cells)
    np.testing.assert_array_equal(cytoplasm(seg.cells, seg.nuclei), cyto)


# ------------------------------------------------------------------- the reference, from the documented algorithm


def _ref_smooth(img: np.ndarray, sigma: float) -> np.ndarray:
    """centrosome smooth_with_function_and_mask(img, gaussian_filter(·, σ, mode="constant", cval=0), full mask)."""
    ones = np.ones(img.shape)
    return ndi.gaussian_filter(img, sigma, mode="constant", cval=0) / (
        ndi.gaussian_filter(ones, sigma, mode="constant", cval=0) + EPS)


def _ref_background(img: np.ndarray, block: int, sigma: float) -> np.ndarray:
    """CorrectIlluminationCalculate Background, each image: centrosome ``block`` labels, ndi.minimum per block, the
    block-minimum image (an Image: float32), smoothed, stored as float32."""
    shape = np.array(img.shape)
    n_blocks = np.maximum((shape.astype(float) / block).astype(int), 1)
    i, j = np.mgrid[0 : shape[0], 0 : shape[1]]
    mult = n_blocks.astype(float) / shape.astype(float)
    labels = (i * mult[0]).astype(int) * n_blocks[1] + (j * mult[1]).astype(int)
    minima = np.asarray(ndi.minimum(img, labels, np.arange(n_blocks.prod())))
    return _ref_smooth(minima[labels].astype(np.float32), sigma).astype(np.float32)


def _ref_local_maxima(img: np.ndarray, labels: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """centrosome is_local_maximum, offset by offset: a labelled pixel stays a maximum while no same-label pixel of
    its footprint is brighter (pixels already beaten are dropped, as centrosome does); maxima ≤ 0 dropped."""
    r = fp.shape[0] // 2
    w = labels.shape[1] + 2 * r
    lab_p, img_p = np.pad(labels, r).ravel(), np.pad(img, r).ravel()
    ys, xs = np.nonzero(labels)
    at = (ys + r) * w + xs + r
    own, val = labels[ys, xs], img[ys, xs]
    alive = val > 0
    for dy, dx in zip(*np.nonzero(fp)):
        ys, xs, at, own, val = ys[alive], xs[alive], at[alive], own[alive], val[alive]
        there = at + (dy - r) * w + (dx - r)
        alive = ~((lab_p[there] == own) & (img_p[there] > val))
    out = np.zeros(labels.shape, bool)
    out[ys[alive], xs[alive]] = True
    return out


def _ref_fill_labeled_holes(labels: np.ndarray) -> np.ndarray:
    """centrosome fill_labeled_holes(labels, mask=labels == 0), walked literally as fill_labeled_holes_loop does:
    nodes are objects and 4-connected background regions (ids above the objects'), edges 4-neighbour contacts;
    a stack walk from everything on the image edge, then a stack walk handing enclosing objects to holes."""
    bg, n = ndi.label(labels == 0)
    lcount = int(labels.max())
    node = labels.astype(np.int64)
    node[bg > 0] = bg[bg > 0] + lcount + 1
    size = lcount + n + 2
    nbrs: list[set[int]] = [set() for _ in range(size)]
    for a, b in ((node[:-1].ravel(), node[1:].ravel()), (node[:, :-1].ravel(), node[:, 1:].ravel())):
        for key in np.unique(a[a != b] * size + b[a != b]).tolist():
            u, v = divmod(key, size)
            nbrs[u].add(v)
            nbrs[v].add(u)
    not_hole, adjacent = [False] * size, [0] * size
    to_do = sorted(set(np.concatenate([node[0], node[-1], node[:, 0], node[:, -1]]).tolist()))
    for k in to_do:
        not_hole[k] = True
    while to_do:
        ii = to_do.pop()
        for jj in sorted(nbrs[ii]):
            if not_hole[jj]:
                continue
            if ii <= lcount:
                if adjacent[jj] == 0:
                    adjacent[jj] = ii
                    continue
                if adjacent[jj] == ii:
                    continue
            elif jj > lcount:
                continue
            not_hole[jj] = True
            to_do.append(jj)
    to_do = [k for k in range(size) if not not_hole[k] and adjacent[k] != 0]
    while to_do:
        ii = to_do.pop()
        for jj in sorted(nbrs[ii]):
            if not not_hole[jj] and adjacent[jj] == 0:
                adjacent[jj] = adjacent[ii]
                to_do.append(jj)
    new = np.array([0 if not_hole[k] else adjacent[k] for k in range(size)])
    out = labels.copy()
    out[bg > 0] = new[node[bg > 0]]
    return out


def _reference_segmentation(dna_raw: np.ndarray, rna_raw: np.ndarray, dna_illum: np.ndarray | None,
                            rna_illum: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """CPJUMP1's modules 1–22 with CellProfiler 4.0.6 semantics (jump_labels.md §1.3–1.6), whole-image calls only.
    Every image between modules is float32, as cellprofiler-core stores it."""
    def load(raw: np.ndarray, illum: np.ndarray | None) -> np.ndarray:  # LoadData rescale, CorrectIlluminationApply
        img = raw.astype(np.float32) / np.float32(65535)
        if illum is not None:
            img = img / illum.astype(np.float32)
        return np.clip(img, 0, 1)

    def global_li(img: np.ndarray, factor: float, low: float, high: float) -> float:
        return min(max(float(threshold_li(img.ravel())) * factor, low), high)

    dna, rna = load(dna_raw, dna_illum), load(rna_raw, rna_illum)
    corr = np.clip(dna - _ref_background(dna, 30, 50 / 2.35), 0, 1)                # modules 16–17
    # 18 IdentifyPrimaryObjects
    t_n = global_li(corr, 1.25, 0.014, 1.0)
    labeled, _ = ndi.label(_ref_smooth(corr, 3 / 0.6744 / 2) >= t_n, EIGHT)
    dist = ndi.distance_transform_edt(ndi.binary_fill_holes(labeled > 0))
    dist += np.random.RandomState(0).uniform(0, 0.001, dist.shape)
    markers, _ = ndi.label(_ref_local_maxima(dist, labeled, strel_disk(7.5)), EIGHT)
    unedited = watershed(-dist - (-dist).min(), markers, mask=labeled != 0, connectivity=2)
    on_edge = np.unique(np.concatenate([unedited[0], unedited[-1], unedited[:, 0], unedited[:, -1]]))
    nuclei = np.where(np.isin(unedited, on_edge), 0, unedited)
    area = np.bincount(nuclei.ravel())[nuclei]
    nuclei[(area < np.pi * 10 ** 2 / 4) | (area > np.pi * 75 ** 2 / 4)] = 0
    kept = np.unique(nuclei[nuclei > 0])
    renumber = np.zeros(unedited.max() + 1, int)
    renumber[kept] = np.arange(1, kept.size + 1)
    nuclei = renumber[nuclei]
    # 19 IdentifySecondaryObjects
    t_c = global_li(rna, 1.0, 0.005, 0.014)
    seeds = np.where(np.isin(unedited, on_edge) | (nuclei > 0), unedited, 0)
    grown = _ref_fill_labeled_holes(watershed(1 - rna, seeds, mask=(rna >= t_c) | (seeds > 0), connectivity=2))
    lookup = np.array(ndi.maximum(nuclei, grown, np.arange(grown.max() + 1)), int)
    lookup[0] = 0
    cells = lookup[grown]
    # 22 IdentifyTertiaryObjects, shrinking the nuclei to their outline
    h, w = nuclei.shape
    padded = np.pad(nuclei, 1, constant_values=-1)
    rim = np.zeros(nuclei.shape, bool)
    for dy in range(3):
        for dx in range(3):
            rim |= padded[dy : dy + h, dx : dx + w] != nuclei
    return nuclei, cells, np.where((nuclei > 0) & ~rim, 0, cells), t_n, t_c
