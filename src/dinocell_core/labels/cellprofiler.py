"""The CPJUMP1 CellProfiler 4.0.6 segmentation (nuclei, cells, cytoplasm) re-implemented with NumPy/SciPy/scikit-image.

Module by module, setting for setting (``analysis_without_batchfile.cppipe`` of the CPJUMP1 paper repository):

1. LoadData rescale and CorrectIlluminationApply, Divide: ``clip(float32(raw) / 65535 / illum, 0, 1)`` for DNA
   and RNA.
2. CorrectIlluminationCalculate "Background" on DNA (block 30, Gaussian 50, each image) and CorrectIlluminationApply,
   Subtract: minima over centrosome's block grid (⌊n/30⌋ nearly equal blocks per axis), mask-normalised Gaussian
   of sigma 50/2.35, ``clip(DNA − bg, 0, 1)``.
3. IdentifyPrimaryObjects: global Minimum Cross-Entropy (``threshold_li``) × 1.25 clamped to [0.014, 1] on the
   unsmoothed image; foreground = Gaussian(sigma 3/1.3488, mask-normalised) ≥ threshold; 8-connected labels; shape
   declumping (maxima of the hole-filled float64 EDT + seeded jitter within a disk of radius 7.5 in the same
   object, watershed of −EDT); objects touching the border and outside the area range π·10²/4 … π·75²/4 removed.
4. IdentifySecondaryObjects, Watershed - Image on RNA: threshold_li × 1 clamped to [0.005, 0.014], no smoothing;
   seeds = the unedited nuclei that were kept or touch the border; watershed of ``1 − RNA`` in
   (foreground ∪ seeds), 8-connected; holes filled as centrosome's ``fill_labeled_holes``; only cells of kept
   nuclei, renumbered to them.
5. IdentifyTertiaryObjects: cytoplasm = cells minus the nuclei's interior (the 1-px outline, 8-neighbour and image
   edge as centrosome's ``outline``, stays).

Numerics follow CellProfiler's: every image between modules is float32 (cellprofiler-core stores them so); inside
a module the Gaussian runs per axis on the float32 image and the mask normalisation, the declumping distances and
jitter are float64. Faster equivalents (block-space Gaussian, OpenCV distance transform, per-object watershed) give
the same pixels. Every setting is a field of :class:`~dinocell_core.labels.settings.CellProfilerParams` (defaults =
CPJUMP1) and is recorded in the store manifest.
Known limits: ``threshold_li`` and ``watershed`` are the installed scikit-image's (CellProfiler 4.0.6 shipped with
0.17); a ``min_diameter`` above 10 would make CellProfiler look for maxima on a down-sampled image, which is not
done here (CPJUMP1 uses 10).
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
    """LoadData's rescale then CorrectIlluminationApply Divide, in float32 as CellProfiler stores every image:
    ``clip(float32(raw) / 65535 / float32(illum), 0, 1)`` (a true division, as python-bioformats rescales)."""
    img = raw.astype(np.float32)
    img /= np.float32(65535.0)
    if illum is not None:
        if illum.shape != raw.shape:
            raise BadFieldError(f"illumination function shape {illum.shape} differs from the image's {raw.shape}")
        img /= illum.astype(np.float32, copy=False)
    return np.clip(img, 0.0, 1.0, out=img)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """scipy's ``gaussian_filter`` kernel (truncate 4): ``exp(-0.5/σ²·x²)`` normalised, in float64."""
    radius = int(4.0 * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


@lru_cache(maxsize=8)
def _bleed(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """``gaussian_filter(ones(shape), σ, mode="constant") + eps``: the denominator of centrosome's
    ``smooth_with_function_and_mask`` for a full mask, the same for every field of one size. Every row of the
    first pass is one of few values, so the second pass runs on the distinct rows only (bit-identical)."""
    col = ndi.gaussian_filter1d(np.ones(shape[0]), sigma, mode="constant")
    vals, inv = np.unique(col, return_inverse=True)
    rows = ndi.gaussian_filter1d(np.repeat(vals[:, None], shape[1], axis=1), sigma, axis=1, mode="constant")
    out = rows[inv.ravel()] + np.finfo(float).eps
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def _bleed32(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """:func:`_bleed` in float32, for the fast approximate pass."""
    return _bleed(shape, sigma).astype(np.float32)


# The float32 OpenCV filter of a non-negative image errs by < 3e-6 of the value; pixels within this relative band
# of the threshold are recomputed exactly.
_NEAR = 1e-4


def smoothed_at_least(img: np.ndarray, sigma: float, t: float) -> np.ndarray:
    """The Threshold module's smoothed foreground, ``smooth_with_function_and_mask(img, gaussian_filter) >= t``,
    for an image ≥ 0 (every image here is clipped to [0, 1]).

    CellProfiler's value is scipy's ``gaussian_filter(img, σ, mode="constant")`` on the float32 image (each axis
    pass sums in float64 and rounds to float32) divided in float64 by the filtered ones plus eps. OpenCV's float32
    filter decides every pixel clear of the threshold; the few within ``_NEAR`` of it are recomputed exactly as
    scipy does (the centre tap, then the symmetric pairs outermost first), so the result is scipy's bit for bit.
    """
    img = img.astype(np.float32, copy=False)
    if sigma <= 0:
        return img >= t
    kernel = gaussian_kernel(sigma)
    approx = cv2.sepFilter2D(img, cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_CONSTANT)
    approx /= _bleed32(img.shape, float(sigma))
    out = approx >= t
    ys, xs = np.nonzero(np.abs(approx - np.float32(t)) <= _NEAR * abs(t))
    if ys.size:
        r = kernel.size // 2
        pad = np.pad(img, r)  # zeros beyond the edge: "constant", cval 0, in both passes
        rows, cols = ys + r, xs[:, None] + np.arange(2 * r + 1)  # the 2r+1 columns the second pass reads
        down = pad[rows[:, None], cols].astype(np.float64) * kernel[r]
        for j in range(r, 0, -1):
            above, below = pad[(rows - j)[:, None], cols], pad[(rows + j)[:, None], cols]
            down += (above.astype(np.float64) + below) * kernel[r - j]
        down = down.astype(np.float32).astype(np.float64)
        across = down[:, r] * kernel[r]
        for j in range(r, 0, -1):
            across += (down[:, r - j] + down[:, r + j]) * kernel[r - j]
        out[ys, xs] = across.astype(np.float32) / _bleed(img.shape, float(sigma))[ys, xs] >= t
    return out


def block_grid(length: int, block: int) -> np.ndarray:
    """centrosome's ``block``: ⌊length/block⌋ (at least 1) blocks of nearly equal size; pixel i is in block
    ``int(i · (n_blocks / length))`` (float64), so 512 px make 17 blocks of 31 or 30 px, not 30-px tiles."""
    n_blocks = max(int(float(length) / float(block)), 1)
    return (np.arange(length) * (float(n_blocks) / float(length))).astype(int)


@lru_cache(maxsize=8)
def _block_weights(length: int, block: int, sigma: float) -> np.ndarray:
    """[length, n_blocks]: the zero-padded Gaussian's weight of each block of :func:`block_grid` on each pixel."""
    kernel = gaussian_kernel(sigma)
    radius = kernel.size // 2
    d = np.arange(length)[None, :] - np.arange(length)[:, None]
    per_pixel = np.where(np.abs(d) <= radius, kernel[np.clip(d + radius, 0, 2 * radius)], 0.0)
    starts = np.flatnonzero(np.diff(block_grid(length, block), prepend=-1))
    out = np.add.reduceat(per_pixel, starts, axis=1)
    out.setflags(write=False)
    return out


def block_background(img: np.ndarray, block: int, sigma: float) -> np.ndarray:
    """CorrectIlluminationCalculate Background (each image): block minima on :func:`block_grid`, then
    the mask-normalised Gaussian of that block image (centrosome's ``smooth_with_function_and_mask``), computed
    in block space.

    The block-minimum image is constant on each block, so scipy's separable zero-padded Gaussian of it is
    ``Wy · T`` (axis 0, rounded to float32 as scipy's float32 output is) then ``· Wxᵀ`` (axis 1, rounded again),
    with T the block minima and W each block's weight on each pixel: small matrix products instead of a 171-tap
    filter over the whole field. The result is stored as float32, as CellProfiler stores the function.
    """
    h, w = img.shape
    ys = np.flatnonzero(np.diff(block_grid(h, block), prepend=-1))
    xs = np.flatnonzero(np.diff(block_grid(w, block), prepend=-1))
    tiles = np.minimum.reduceat(np.minimum.reduceat(img, ys, axis=0), xs, axis=1).astype(np.float64)
    wy, wx = _block_weights(h, block, float(sigma)), _block_weights(w, block, float(sigma))
    down = (wy @ tiles).astype(np.float32).astype(np.float64)
    across = (down @ wx.T).astype(np.float32)
    return (across / _bleed(img.shape, float(sigma))).astype(np.float32)


def subtract_background(dna: np.ndarray, block: int = 30, smoothing: float = 50.0) -> np.ndarray:
    """CorrectIlluminationCalculate Background then CorrectIlluminationApply Subtract, clipped (float32)."""
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
    """centrosome's ``is_local_maximum``: pixels equal to the maximum of their footprint within the same label,
    compared in the image's own dtype (float64 for the declumping distances, as CellProfiler compares them).

    A float32 grey dilation proposes the maxima whose footprint holds no other object (rounding is monotone, so it
    misses none); those, and the pixels whose footprint reaches another object, are then checked exactly offset
    by offset (few).
    """
    fg = labels > 0
    kernel = footprint.astype(np.uint8)
    masked = np.where(fg, image.astype(np.float32), np.float32(-1.0))
    check = fg & (masked >= cv2.dilate(masked, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=-1.0))
    lab_f = labels.astype(np.float32)
    big = np.float32(labels.max() + 1)
    lo = cv2.erode(np.where(fg, lab_f, big), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=float(big))
    hi = cv2.dilate(lab_f, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0.0)
    check |= fg & ((lo != lab_f) | (hi != lab_f))
    ys, xs = np.nonzero(check)
    h, w = labels.shape
    r = footprint.shape[0] // 2
    own, val = labels[ys, xs], image[ys, xs]
    ok = np.ones(ys.size, bool)
    for dy, dx in zip(*(np.nonzero(footprint))):
        yy, xx = ys + dy - r, xs + dx - r
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        yy, xx = np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)
        ok &= ~(inside & (labels[yy, xx] == own) & (image[yy, xx] > val))
    out = np.zeros(labels.shape, bool)
    out[ys[ok], xs[ok]] = True
    return out


def fill_holes(binary: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes``: background regions (4-connected) not reaching the image edge.

    Equal to CellProfiler's ``fill_labeled_holes(labels) > 0`` on 8-connected object labels (no two objects
    4-touch, so every enclosed background region is a hole of the one object around it)."""
    bg, n = ndi.label(~binary, FOUR)
    edge = np.zeros(n + 1, bool)
    edge[np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]])] = True
    edge[0] = True
    return binary | ~edge[bg]


# OpenCV's exact transform (Felzenszwalb, float32) gives the true integer squared distance while a float32 error
# in a parabola intersection moves a value by < 1 (side² · 2.4e-7 < 1); past this side scipy's transform takes over.
_CV_EDT_MAX_SIDE = 1600


def edt(binary: np.ndarray) -> np.ndarray:
    """scipy's ``distance_transform_edt`` (float64 √ of an integer squared distance), which CellProfiler uses.

    OpenCV's precise transform is 3× faster; its float32 result is squared and rounded back to the integer
    squared distance, whose float64 root is then bit-identical to scipy's.
    """
    if binary.all() or max(binary.shape) > _CV_EDT_MAX_SIDE:
        return ndi.distance_transform_edt(binary)
    d = cv2.distanceTransform(binary.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64)
    np.square(d, out=d)
    np.rint(d, out=d)
    return np.sqrt(d, out=d)


@lru_cache(maxsize=4)
def _jitter(shape: tuple[int, int]) -> np.ndarray:
    """``numpy.random.seed(0); numpy.random.uniform(0, 0.001, shape)``: CellProfiler's tie-breaking noise."""
    out = np.random.RandomState(0).uniform(0.0, 0.001, shape)
    out.setflags(write=False)
    return out


def declump_shape(binary: np.ndarray, maxima_distance: float) -> np.ndarray:
    """Shape/Shape declumping of IdentifyPrimaryObjects: 8-connected objects split by watershed of −EDT.

    As CellProfiler: float64 distances of the hole-filled foreground plus its seeded jitter, maxima within a disk
    of radius ``maxima_distance − 0.5`` in the same object, one marker per 8-connected group of maxima (touching
    maxima need two float64 values √k + jitter to tie exactly; below ~500 px roots of different k are > 0.001
    apart, so only a collision of the jitter itself could do it, and ``binary_shrink`` has nothing to shrink),
    and the watershed of ``−dist − min(−dist)`` with those markers.
    """
    labels, n = ndi.label(binary, EIGHT)
    if n == 0:
        return labels.astype(np.int32)
    dist = edt(fill_holes(binary))
    dist += _jitter(dist.shape)
    maxima = local_maxima(dist, labels, strel_disk(max(maxima_distance - 0.5, 1.0)))
    maxima &= dist > 0
    markers, n_markers = ndi.label(maxima, EIGHT)
    if n_markers == 0:
        return np.zeros_like(labels, dtype=np.int32)
    np.negative(dist, out=dist)
    dist -= dist.min()
    return _watershed_by_object(dist, markers, labels, n)


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
    unedited = declump_shape(smoothed_at_least(dna, p.nuclei_smoothing_scale / 0.6744 / 2.0, t), p.maxima_distance)
    nuclei, _ = filter_nuclei(unedited, p.min_diameter, p.max_diameter)
    return nuclei, unedited, t


# -------------------------------------------------------------------------------------- secondary objects

def fill_labeled_holes(labels: np.ndarray) -> np.ndarray:
    """centrosome's ``fill_labeled_holes(labels, mask=labels == 0)``, as IdentifySecondaryObjects fills holes.

    A graph of objects and background regions (4-connected), joined where two pixels touch *4-wise* (diagonal
    contact does not count). Not-a-hole are the regions and objects on the image edge, then every object touching
    a not-a-hole background region, and every node touching two different not-a-hole objects, until nothing
    changes. A background region left over is a hole: it takes the one not-a-hole object it touches; one touching
    none (inside an enclosed object) takes, by CellProfiler's stack walk over the remaining holes, that of a hole
    next to it, so a hole in a cell enclosed by another cell gets the outer cell's id. Objects never change.

    The outer background and the objects touching it are settled with one dilation; the graph is built only
    from the pixels of enclosed regions and of the other objects (few), which is all the rules look at.
    """
    bg, n = ndi.label(labels == 0, FOUR)
    edge_bg = np.zeros(n + 1, bool)
    edge_bg[np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]])] = True
    edge_bg[0] = False
    if edge_bg.sum() == n:  # every background region reaches the edge: no holes
        return labels
    lcount = int(labels.max())
    size = lcount + n + 1  # nodes: objects 1..lcount, background regions lcount+1..lcount+n (raster order)
    node = np.where(bg > 0, bg + lcount, labels).astype(np.int32, copy=False)
    not_hole = np.zeros(size, bool)
    not_hole[np.concatenate([node[0], node[-1], node[:, 0], node[:, -1]])] = True
    not_hole[lcount + 1 :] |= edge_bg[1:]
    outer = cv2.dilate(edge_bg[bg].view(np.uint8), FOUR.astype(np.uint8)).view(bool)
    not_hole[labels[outer & (labels > 0)]] = True
    not_hole[0] = False
    src, dst = _contacts(node, ~not_hole[node], size)
    is_obj = np.arange(size) <= lcount
    while True:
        open_ = ~not_hole[dst]
        from_obj = open_ & not_hole[src] & is_obj[src]
        from_bg = open_ & not_hole[src] & ~is_obj[src] & is_obj[dst]
        grow = np.bincount(dst[from_obj], minlength=size) >= 2
        grow[dst[from_bg]] = True
        grow &= ~not_hole
        if not grow.any():
            break
        not_hole |= grow
    enclosing = np.zeros(size, np.int64)  # the not-a-hole object next to a hole (unique once the loop settles)
    from_obj = ~not_hole[dst] & not_hole[src] & is_obj[src]
    enclosing[dst[from_obj]] = src[from_obj]
    needy = ~not_hole & (enclosing == 0)
    if needy[lcount + 1 :].any():
        _walk_holes(src, dst, not_hole, enclosing, needy)
    fill = np.where(not_hole, 0, enclosing)[lcount + 1 :]
    out = labels.copy()
    sel = bg > 0
    out[sel] = fill[bg[sel] - 1].astype(out.dtype)
    return out


def _contacts(node: np.ndarray, open_px: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct 4-neighbour contacts (both directions) between different nodes, at least one of them open."""
    h, w = node.shape
    ys, xs = np.nonzero(open_px)
    here = node[ys, xs].astype(np.int64)
    keys = []
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        yy, xx = ys + dy, xs + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        there = node[yy[ok], xx[ok]]
        a = here[ok]
        keys.append(np.minimum(a, there)[a != there] * size + np.maximum(a, there)[a != there])
    key = np.unique(np.concatenate(keys))
    return np.concatenate([key // size, key % size]), np.concatenate([key % size, key // size])


def _walk_holes(src: np.ndarray, dst: np.ndarray, not_hole: np.ndarray, enclosing: np.ndarray,
                needy: np.ndarray) -> None:
    """The second walk of centrosome's ``fill_labeled_holes_loop``, in its order: holes with an enclosing object,
    pushed in id order, popped last-in first-out, hand it to the neighbours (ascending id) that have none.
    Only holes next to a needy one can hand anything on, so only they are pushed (same order)."""
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    first = np.searchsorted(src, np.arange(enclosing.size + 1))
    givers = np.unique(src[needy[dst] & ~not_hole[src] & (enclosing[src] > 0)])
    stack = givers.tolist()
    while stack:
        ii = stack.pop()
        for jj in dst[first[ii]:first[ii + 1]].tolist():
            if needy[jj]:
                needy[jj] = False
                enclosing[jj] = enclosing[ii]
                stack.append(jj)


def secondary_seeds(unedited: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """IdentifySecondaryObjects' seeds: unedited nuclei kept in Nuclei or touching the border."""
    seeds = unedited.copy()
    seeds[~touching_border(unedited)[unedited] & (nuclei == 0)] = 0
    return seeds


def identify_cells(rna: np.ndarray, unedited: np.ndarray, nuclei: np.ndarray,
                   p: CellProfilerParams) -> tuple[np.ndarray, float]:
    """Watershed - Image on RNA from the nuclei seeds; cells take their nucleus's id. Returns (cells, threshold)."""
    t = mce_threshold(rna, p.cells_correction, p.cells_bounds)  # on the unsmoothed image, as the Threshold module
    seeds = secondary_seeds(unedited, nuclei)
    mask = smoothed_at_least(rna, p.cells_smoothing_scale / 0.6744 / 2.0, t) | (seeds > 0)
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
