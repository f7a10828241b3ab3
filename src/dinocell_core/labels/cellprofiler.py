"""The CPJUMP1 CellProfiler 4.0.6 segmentation (nuclei, cells, cytoplasm) re-implemented with NumPy/SciPy/scikit-image.

Module by module, setting for setting (``analysis_without_batchfile.cppipe`` of the CPJUMP1 paper repository):

1. CorrectIlluminationApply, Divide: ``clip((raw / 65535) / illum, 0, 1)`` for DNA and RNA.
2. CorrectIlluminationCalculate "Background" on DNA (block 30, Gaussian 50, each image) and CorrectIlluminationApply,
   Subtract: 30×30 block minima, mask-normalised Gaussian of sigma 50/2.35, ``clip(DNA − bg, 0, 1)``.
3. IdentifyPrimaryObjects: global Minimum Cross-Entropy (``threshold_li``) × 1.25 clamped to [0.014, 1] on the
   unsmoothed image; foreground = Gaussian(sigma 3/1.3488, mask-normalised) ≥ threshold; 8-connected labels; shape
   declumping (maxima of the hole-filled EDT + seeded jitter within a disk of radius 7.5 in the same object,
   watershed of −EDT); objects touching the border and outside the area range π·10²/4 … π·75²/4 removed.
4. IdentifySecondaryObjects, Watershed - Image on RNA: threshold_li × 1 clamped to [0.005, 0.014], no smoothing;
   seeds = the unedited nuclei that were kept or touch the border; watershed of ``1 − RNA`` in
   (foreground ∪ seeds), 8-connected; enclosed holes filled; only cells of kept nuclei, renumbered to them.
5. IdentifyTertiaryObjects: cytoplasm = cells minus the nuclei's interior (the 1-px outline, 8-neighbour and image
   edge as centrosome's ``outline``, stays).

Every setting is a field of :class:`~dinocell_core.labels.settings.CellProfilerParams` (defaults = CPJUMP1) and is
recorded in the store manifest.
Known deviations: CellProfiler's ``binary_shrink`` of touching maxima is replaced by one marker per 8-connected
group of maxima (with the tie-breaking jitter such groups are single pixels in practice); ``threshold_li`` is
scikit-image's current iterative version.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_li
from skimage.segmentation import watershed

from dinocell_core.errors import DinocellError
from dinocell_core.labels.settings import CellProfilerParams

EIGHT = np.ones((3, 3), bool)
FOUR = ndi.generate_binary_structure(2, 1)


class BadFieldError(DinocellError):
    """A field the pipeline cannot label (blank, saturated, missing channel); the message says which and why."""


@dataclass
class Segmentation:
    """Nuclei and cells (same ids), the unedited nuclei and the two thresholds actually used."""

    nuclei: np.ndarray
    cells: np.ndarray
    unedited: np.ndarray
    nuclei_threshold: float
    cells_threshold: float


# ----------------------------------------------------------------------------------------- image processing

def correct_illumination(raw: np.ndarray, illum: np.ndarray | None) -> np.ndarray:
    """CorrectIlluminationApply Divide on a LoadData-rescaled image: ``clip((raw / 65535) / illum, 0, 1)``."""
    img = raw.astype(np.float32) * np.float32(1.0 / 65535.0)
    if illum is not None:
        if illum.shape != raw.shape:
            raise BadFieldError(f"illumination function shape {illum.shape} differs from the image's {raw.shape}")
        img /= illum.astype(np.float32, copy=False)
    return np.clip(img, 0.0, 1.0, out=img)


def gaussian_normalised(img: np.ndarray, sigma: float) -> np.ndarray:
    """Mask-normalised Gaussian with a zero ("constant") border and a full mask, as centrosome's
    ``smooth_with_function_and_mask``: ``G(img) / G(ones)`` (scipy's truncate-4 kernel, run by OpenCV)."""
    if sigma <= 0:
        return img.astype(np.float32, copy=True)
    return _gaussian_constant(img.astype(np.float32, copy=False), sigma) / _bleed(img.shape, float(sigma))


def _gaussian_constant(img: np.ndarray, sigma: float) -> np.ndarray:
    k = 2 * int(4.0 * sigma + 0.5) + 1
    return cv2.GaussianBlur(img, (k, k), sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)


@lru_cache(maxsize=8)
def _bleed(shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """``G(ones)``: the same for every field of one size, so computed once per process."""
    return _gaussian_constant(np.ones(shape, np.float32), sigma)


def block_minimum(img: np.ndarray, block: int) -> np.ndarray:
    """Every pixel replaced by the minimum of its ``block``×``block`` tile (partial tiles at the far edges): the
    Background method's definition, which :func:`block_background` evaluates without building this image."""
    h, w = img.shape
    ph, pw = -h % block, -w % block
    pad = np.pad(img, ((0, ph), (0, pw)), mode="edge") if ph or pw else img
    tiles = pad.reshape(pad.shape[0] // block, block, pad.shape[1] // block, block).min(axis=(1, 3))
    return np.repeat(np.repeat(tiles, block, 0), block, 1)[:h, :w]


def _block_weights(length: int, block: int, sigma: float) -> np.ndarray:
    """[length, n_blocks]: the zero-padded, truncate-4 Gaussian's weight of each block on each pixel."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    full = np.zeros((length, length + 2 * radius))
    for y in range(length):
        full[y, y : y + 2 * radius + 1] = kernel
    per_pixel = full[:, radius : radius + length]  # source pixels outside the image weigh 0 ("constant")
    n_blocks = -(-length // block)
    pad = np.zeros((length, n_blocks * block))
    pad[:, :length] = per_pixel
    return pad.reshape(length, n_blocks, block).sum(axis=2)


def block_background(img: np.ndarray, block: int, sigma: float) -> np.ndarray:
    """``gaussian_normalised(block_minimum(img, block), sigma)`` computed exactly in block space.

    The block-minimum image is constant on each tile, so the separable, zero-padded Gaussian of it is
    ``Wy · T · Wxᵀ`` with T the tile minima and W the Gaussian's weight of each tile on each pixel; the
    normaliser ``G(ones)`` is the outer product of W's row sums. A few small matrix products instead of a
    171-tap filter over the whole field.
    """
    h, w = img.shape
    ph, pw = -h % block, -w % block
    pad = np.pad(img, ((0, ph), (0, pw)), mode="edge") if ph or pw else img
    tiles = pad.reshape(pad.shape[0] // block, block, pad.shape[1] // block, block).min(axis=(1, 3))
    wy, wx = _block_weights_cached(h, block, float(sigma)), _block_weights_cached(w, block, float(sigma))
    num = wy @ tiles.astype(np.float64) @ wx.T
    den = np.outer(wy.sum(1), wx.sum(1))
    return (num / den).astype(np.float32)


@lru_cache(maxsize=8)
def _block_weights_cached(length: int, block: int, sigma: float) -> np.ndarray:
    return _block_weights(length, block, sigma)


def subtract_background(dna: np.ndarray, block: int = 30, smoothing: float = 50.0) -> np.ndarray:
    """CorrectIlluminationCalculate Background (each image) then CorrectIlluminationApply Subtract, clipped."""
    return np.clip(dna - block_background(dna, block, smoothing / 2.35), 0.0, 1.0)


def mce_threshold(img: np.ndarray, correction: float, bounds: tuple[float, float]) -> float:
    """Threshold module, Global / Minimum Cross-Entropy: ``clamp(threshold_li(img) × correction, *bounds)``."""
    flat = img.ravel()
    t = float(threshold_li(flat)) if float(flat.min()) < float(flat.max()) else float(flat[0])
    return float(min(max(t * correction, bounds[0]), bounds[1]))


# ---------------------------------------------------------------------------------------- primary objects

def strel_disk(radius: float) -> np.ndarray:
    """centrosome's ``strel_disk``: offsets within ``radius`` on a (2·int(radius)+1)² grid."""
    r = int(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= radius * radius


def local_maxima(image: np.ndarray, labels: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """centrosome's ``is_local_maximum``: pixels equal to the maximum of their footprint within the same label.

    One grey dilation finds every maximum whose footprint holds no other object; only pixels whose footprint
    reaches another object are checked offset by offset (few, at gaps between close objects).
    """
    img = image.astype(np.float32, copy=False)
    fg = labels > 0
    kernel = footprint.astype(np.uint8)
    masked = np.where(fg, img, np.float32(-1.0))
    out = fg & (masked >= cv2.dilate(masked, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=-1.0))
    lab_f = labels.astype(np.float32)
    big = np.float32(labels.max() + 1)
    lo = cv2.erode(np.where(fg, lab_f, big), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=float(big))
    hi = cv2.dilate(lab_f, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0.0)
    contested = fg & ((lo != lab_f) | (hi != lab_f))
    ys, xs = np.nonzero(contested)
    if ys.size:
        h, w = labels.shape
        r = footprint.shape[0] // 2
        own, val = labels[ys, xs], img[ys, xs]
        ok = np.ones(ys.size, bool)
        for dy, dx in zip(*(np.nonzero(footprint))):
            yy, xx = ys + dy - r, xs + dx - r
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            yy, xx = np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)
            ok &= ~(inside & (labels[yy, xx] == own) & (img[yy, xx] > val))
        out[ys, xs] = ok
    return out


def fill_holes(binary: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes``: background regions (4-connected) not reaching the image edge."""
    bg, n = ndi.label(~binary, FOUR)
    edge = np.zeros(n + 1, bool)
    edge[np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]])] = True
    edge[0] = True
    return binary | ~edge[bg]


def edt(binary: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance to the nearest background pixel (OpenCV's Felzenszwalb transform, float32)."""
    if binary.all():
        return ndi.distance_transform_edt(binary).astype(np.float32)
    return cv2.distanceTransform(binary.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def declump_shape(binary: np.ndarray, maxima_distance: float) -> np.ndarray:
    """Shape/Shape declumping of IdentifyPrimaryObjects: 8-connected objects split by watershed of −EDT."""
    labels, n = ndi.label(binary, EIGHT)
    if n == 0:
        return labels.astype(np.int32)
    dist = edt(fill_holes(binary))
    dist += (np.random.RandomState(0).rand(*dist.shape) * 0.001).astype(np.float32)
    maxima = local_maxima(dist, labels, strel_disk(max(maxima_distance - 0.5, 1.0)))
    maxima &= dist > 0
    markers, n_markers = ndi.label(maxima, EIGHT)
    if n_markers == 0:
        return np.zeros_like(labels, dtype=np.int32)
    ws = _watershed_by_object(-dist - float((-dist).min()), markers, labels, n)
    return ws


def _watershed_by_object(surface: np.ndarray, markers: np.ndarray, objects: np.ndarray, n: int) -> np.ndarray:
    """``watershed(surface, markers, mask=objects > 0, 8-connected)`` run per object (8-connected parts of the
    mask): a part with one marker floods to it entirely and one with none stays background, so the priority
    flood runs only inside parts holding two or more markers."""
    out = np.zeros(objects.shape, np.int32)
    inside = markers > 0
    base = np.int64(markers.max()) + 1
    pairs = np.unique(objects[inside].astype(np.int64) * base + markers[inside])  # distinct (object, marker)
    obj_of = pairs // base
    per_obj = np.bincount(obj_of, minlength=n + 1)
    first = np.zeros(n + 1, np.int32)
    first[obj_of] = (pairs % base).astype(np.int32)
    single = per_obj == 1
    single[0] = False
    sel = single[objects]
    out[sel] = first[objects[sel]]
    multi = per_obj >= 2
    multi[0] = False
    if multi.any():
        # one flood over all multi-marker parts at once: they are disconnected, so none reaches another, and
        # a single call avoids the per-call set-up that dominates hundreds of small floods
        mask = multi[objects]
        ws = watershed(surface, np.where(mask, markers, 0), mask=mask, connectivity=2)
        out[mask] = ws[mask]
    return out


def touching_border(labels: np.ndarray) -> np.ndarray:
    """Boolean per label id (index 0 = background, False): does the object touch an image edge?"""
    hit = np.zeros(int(labels.max()) + 1, bool)
    hit[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    hit[0] = False
    return hit


def relabel(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep the ids where ``keep[id]`` and renumber them 1..n in id order."""
    keep = keep.copy()
    keep[0] = False
    lut = np.zeros(keep.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def filter_nuclei(unedited: np.ndarray, min_diameter: float, max_diameter: float) -> tuple[np.ndarray, np.ndarray]:
    """Size (area outside π·d²/4 for the diameter range) and border filters; returns (nuclei, kept ids)."""
    areas = np.bincount(unedited.ravel())
    lo, hi = np.pi * min_diameter ** 2 / 4, np.pi * max_diameter ** 2 / 4
    keep = (areas >= lo) & (areas <= hi) & ~touching_border(unedited)
    keep[0] = False
    return relabel(unedited, keep), keep


def identify_nuclei(dna: np.ndarray, p: CellProfilerParams) -> tuple[np.ndarray, np.ndarray, float]:
    """IdentifyPrimaryObjects on the background-subtracted DNA image: (nuclei, unedited labels, threshold)."""
    t = mce_threshold(dna, p.nuclei_correction, p.nuclei_bounds)
    smooth = gaussian_normalised(dna, p.nuclei_smoothing_scale / 0.6744 / 2.0)
    unedited = declump_shape(smooth >= t, p.maxima_distance)
    nuclei, _ = filter_nuclei(unedited, p.min_diameter, p.max_diameter)
    return nuclei, unedited, t


# -------------------------------------------------------------------------------------- secondary objects

def fill_labeled_holes(labels: np.ndarray) -> np.ndarray:
    """Background regions (4-connected) not touching the image edge and bordered by a single object take it.

    Per background pixel, the largest and smallest object id among its 8 neighbours (two 3×3 grey filters);
    a region is a hole of one object when the extremes over the region agree.
    """
    bg, n = ndi.label(labels == 0, FOUR)
    if n == 0 or labels.max() == 0:
        return labels
    edge = np.zeros(n + 1, bool)
    edge[np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]])] = True
    edge[0] = True
    cand = ~edge[bg]  # pixels of background regions enclosed by objects (few, small)
    if not cand.any():
        return labels
    lab_f = labels.astype(np.float32)
    big = float(labels.max() + 1)
    kernel = np.ones((3, 3), np.uint8)
    hi_px = cv2.dilate(lab_f, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0.0)[cand]
    lo_px = cv2.erode(np.where(labels > 0, lab_f, np.float32(big)), kernel, borderType=cv2.BORDER_CONSTANT,
                      borderValue=big)[cand]
    region = bg[cand]
    hi = np.zeros(n + 1, np.float64)
    lo = np.full(n + 1, big, np.float64)
    np.maximum.at(hi, region, hi_px)
    np.minimum.at(lo, region, lo_px)
    fill = (lo == hi) & (hi > 0) & ~edge
    out = labels.copy()
    sel = fill[bg]
    out[sel] = hi[bg[sel]].astype(out.dtype)
    return out


def secondary_seeds(unedited: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """IdentifySecondaryObjects' seeds: unedited nuclei kept in Nuclei or touching the border."""
    seeds = unedited.copy()
    seeds[~touching_border(unedited)[unedited] & (nuclei == 0)] = 0
    return seeds


def identify_cells(rna: np.ndarray, unedited: np.ndarray, nuclei: np.ndarray,
                   p: CellProfilerParams) -> tuple[np.ndarray, float]:
    """Watershed - Image on RNA from the nuclei seeds; cells take their nucleus's id. Returns (cells, threshold)."""
    img = gaussian_normalised(rna, p.cells_smoothing_scale / 0.6744 / 2.0) if p.cells_smoothing_scale > 0 else rna
    t = mce_threshold(img, p.cells_correction, p.cells_bounds)
    seeds = secondary_seeds(unedited, nuclei)
    mask = (img >= t) | (seeds > 0)
    parts, n_parts = ndi.label(mask, EIGHT)
    grown = _watershed_by_object(1.0 - rna, seeds, parts, n_parts) if seeds.any() else seeds
    grown = fill_labeled_holes(grown)
    # a cell keeps the id of the retained nucleus inside it (0 when its seed was dropped)
    lookup = np.zeros(int(grown.max()) + 1, np.int32)
    np.maximum.at(lookup, grown.ravel(), nuclei.ravel().astype(np.int32))
    lookup[0] = 0
    return lookup[grown], t


def outline(labels: np.ndarray) -> np.ndarray:
    """centrosome's ``outline`` as a mask: labelled pixels with an 8-neighbour of another value, and every labelled
    pixel on the image edge."""
    diff = np.zeros(labels.shape, bool)
    for a, b in (((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                 ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
                 ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None)))):
        d = labels[a] != labels[b]
        diff[a] |= d
        diff[b] |= d
    diff[0, :] = diff[-1, :] = diff[:, 0] = diff[:, -1] = True
    return diff & (labels > 0)


def cytoplasm(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """IdentifyTertiaryObjects with "shrink smaller objects prior to subtraction": the cells with every nucleus
    pixel not on its :func:`outline` set to 0 (the 1-px rim stays, so no cell vanishes); cell ids kept."""
    return np.where((nuclei > 0) & ~outline(nuclei), 0, cells).astype(cells.dtype, copy=False)


# -------------------------------------------------------------------------------------------- the pipeline

def check_channel(raw: np.ndarray, name: str, max_saturated: float) -> None:
    """Refuse blank or saturated images with a message saying which and how much."""
    if raw.size == 0:
        raise BadFieldError(f"{name} image is empty")
    sat = float(np.count_nonzero(raw >= 65535)) / raw.size
    if sat > max_saturated:
        raise BadFieldError(f"{name} image is saturated ({sat:.0%} of pixels at 65535, limit {max_saturated:.0%})")
    if int(raw.max()) == int(raw.min()):
        raise BadFieldError(f"{name} image is blank (every pixel = {int(raw.flat[0])})")


def segment_field(dna_raw: np.ndarray, rna_raw: np.ndarray, dna_illum: np.ndarray | None = None,
                  rna_illum: np.ndarray | None = None,
                  params: CellProfilerParams = CellProfilerParams()) -> Segmentation:
    """The whole CPJUMP1 segmentation of one field from its raw uint16 DNA (ch5) and RNA (ch3) images."""
    if dna_raw.shape != rna_raw.shape or dna_raw.ndim != 2:
        raise BadFieldError(f"DNA {dna_raw.shape} and RNA {rna_raw.shape} must be 2-D images of one shape")
    check_channel(dna_raw, "DNA (ch5)", params.max_saturated)
    check_channel(rna_raw, "RNA (ch3)", params.max_saturated)
    dna = correct_illumination(dna_raw, dna_illum)
    rna = correct_illumination(rna_raw, rna_illum)
    corr = subtract_background(dna, params.bg_block_size, params.bg_smoothing)
    nuclei, unedited, t_n = identify_nuclei(corr, params)
    cells, t_c = identify_cells(rna, unedited, nuclei, params)
    return Segmentation(nuclei, cells, unedited, t_n, t_c)
