"""Distance-map target and its inverse (SAMCell-style, per-cell normalised).

Each cell's EDT is divided by that cell's own maximum so every cell peaks at 1.0 and touching cells dip at their
shared border: that dip is what lets the watershed split them (a global normalisation cannot; reference §1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed

from dinocell_core.seg.config import (
    DEFAULT_FILL_THRESHOLD,
    DEFAULT_GROW_THRESHOLD,
    DEFAULT_MIN_SIZE,
    DEFAULT_PEAK_THRESHOLD,
    DEFAULT_RING_FRACTION,
    GROWTH_SLOPE,
    MARKER_CONNECTIVITY,
    MIN_MARKER_SIZE,
)


def distance_map(labels: np.ndarray) -> np.ndarray:
    """Per-cell normalised exact Euclidean distance transform, float32 in [0, 1], background 0.

    Works on per-object crops (``find_objects``) widened by one pixel, so the cost is O(total object area)
    rather than O(cells × pixels). Labels of any integer width are accepted (ids ≥ 2³¹ included).

    Image-edge convention: the image edge is **not** a cell border. A cell cut by the edge keeps rising towards
    it, as if the image were mirrored there — which is exactly what inference shows the network, since it
    reflect-pads the image (``seg.inference``). Training targets and inference therefore agree.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"distance_map expects a 2-D label image, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"distance_map expects integer labels, got dtype {lab.dtype}")
    out = np.zeros(lab.shape, dtype=np.float32)
    if lab.size == 0 or lab.max() <= 0:
        return out
    lab = sequential_labels(lab)
    for idx, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, lab.shape[0])
        x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, lab.shape[1])
        cell = lab[y0:y1, x0:x1] == idx
        # the widened crop holds a non-cell pixel on every side except where it meets the image edge, so the
        # EDT sees a border everywhere but there
        d = ndi.distance_transform_edt(cell) if not cell.all() else _edt_whole_image(cell)
        m = d.max()
        if m > 0:
            view = out[y0:y1, x0:x1]
            view[cell] = (d[cell] / m).astype(np.float32)
    return out


def _edt_whole_image(cell: np.ndarray) -> np.ndarray:
    """A cell covering the whole image has no border at all: constant map (it peaks everywhere)."""
    return np.ones(cell.shape, np.float64)


def sequential_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as int32 ids 1..n in the order of the original ids (0 stays background), for any integer width.

    Ids ≥ 2³¹ would wrap negative in an int32 cast, and sparse huge ids would make ``find_objects`` allocate one
    slot per id; already-compact int32 labels are returned as they are.
    """
    lab = np.asarray(labels)
    if lab.size == 0:
        return lab.astype(np.int32)
    if lab.dtype == np.int32 and lab.min() >= 0 and lab.max() <= 4 * lab.size:
        return lab
    if np.issubdtype(lab.dtype, np.signedinteger) and lab.min() < 0:
        raise ValueError("labels must be non-negative")
    if lab.max() <= min(np.iinfo(np.int32).max, 4 * lab.size):
        return lab.astype(np.int32)
    ids, inv = np.unique(lab.ravel(), return_inverse=True)
    if ids[0] != 0:
        inv = inv + 1
    return inv.reshape(lab.shape).astype(np.int32)


def labels_from_distance(dist: np.ndarray, peak_threshold: float = DEFAULT_PEAK_THRESHOLD,
                         fill_threshold: float = DEFAULT_FILL_THRESHOLD,
                         min_size: int = DEFAULT_MIN_SIZE, grow_threshold: float = DEFAULT_GROW_THRESHOLD,
                         ring_fraction: float = DEFAULT_RING_FRACTION, connectivity: int = MARKER_CONNECTIVITY,
                         min_marker_size: int = MIN_MARKER_SIZE, growth_slope: float = GROWTH_SLOPE) -> np.ndarray:
    """Instance labels (int32, sequential) from a distance map.

    1. Markers: connected components (``connectivity`` 1 = 4-, 2 = 8-neighbours) of ``dist > peak_threshold``;
       a marker smaller than ``min_marker_size`` px is dropped when another marker shares its fill region (a
       ragged peak's fringe, not a cell), kept when it is alone (a small cell).
    2. Cores: watershed of ``-dist`` from the markers inside ``dist > fill_threshold``; fill regions without a
       marker stay background.
    3. Growth back to the border: per-cell normalisation puts a cell's outer ring at 1/R (R its inradius in px),
       so the fill threshold erodes every core by ``fill·R`` px — IoU 0.84–0.88 with a perfect map. Each core
       grows back by at most the ring it lost, ``ceil(fill·R)`` px (R = the core's area-equivalent radius
       / (1 − fill)), into pixels above its own ring level ``max(ring_fraction / R, grow_threshold)``, only while
       the map still falls toward the new pixel at ≥ ``growth_slope / R`` per px (the per-cell target's own
       slope: a blurred map's tail past the true border falls more slowly and is not taken), never into another
       cell. ``grow_threshold = fill_threshold`` switches growth off.
    4. Objects smaller than ``min_size`` px are dropped.
    """
    d = np.asarray(dist, dtype=np.float32)
    if d.ndim != 2:
        raise ValueError(f"labels_from_distance expects a 2-D map, got shape {d.shape}")
    if not 0.0 <= fill_threshold < peak_threshold:
        raise ValueError(f"need 0 <= fill_threshold < peak_threshold, got {fill_threshold} / {peak_threshold}")
    if not 0.0 <= grow_threshold <= fill_threshold:
        raise ValueError(f"need 0 <= grow_threshold <= fill_threshold, got {grow_threshold} / {fill_threshold}")
    if not 0.0 < ring_fraction <= 1.0:
        raise ValueError(f"ring_fraction must be in (0, 1], got {ring_fraction}")
    if not 0.0 <= growth_slope <= 1.0:
        raise ValueError(f"growth_slope must be in [0, 1], got {growth_slope}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity}")
    peaks = d > peak_threshold
    markers, n = ndi.label(peaks, structure=ndi.generate_binary_structure(2, connectivity))
    if n == 0:
        return np.zeros(d.shape, dtype=np.int32)
    parts, n_parts = ndi.label(d > fill_threshold)
    # marker → fill part, read on the marker pixels only (full-frame passes are what a 1080² field costs)
    at = np.flatnonzero(peaks)
    marker_at = markers.reshape(-1)[at]
    part_of = np.zeros(n + 1, np.int64)
    part_of[marker_at] = parts.reshape(-1)[at]
    if min_marker_size > 1:
        n, part_of = _drop_small_markers(markers, at, marker_at, part_of, n_parts, min_marker_size)
    labels = _watershed_by_component(d, markers, n, parts, n_parts, part_of)
    if grow_threshold < fill_threshold:
        _grow_to_border(labels, d, n, fill_threshold, grow_threshold, ring_fraction, growth_slope)
    if min_size > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
            labels = relabel_sequential(labels)[0]
    return labels.astype(np.int32, copy=False)


def _drop_small_markers(markers: np.ndarray, at: np.ndarray, marker_at: np.ndarray, part_of: np.ndarray,
                        n_parts: int, min_marker_size: int) -> tuple[int, np.ndarray]:
    """Remove (in place) markers below ``min_marker_size`` px that share their fill part with another marker and
    renumber the rest 1..n; returns n and the new marker → part table. ``at`` are the marker pixels (flat indices)
    and ``marker_at`` their marker ids."""
    n = part_of.size - 1
    sizes = np.bincount(marker_at, minlength=n + 1)
    per_part = np.bincount(part_of[1:], minlength=n_parts + 1)
    drop = (sizes < min_marker_size) & (per_part[part_of] > 1)
    drop[0] = False
    if not drop.any():
        return n, part_of
    lut = np.zeros(n + 1, np.int32)
    keep = np.flatnonzero(~drop[1:]) + 1
    lut[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    markers.reshape(-1)[at] = lut[marker_at]
    return int(keep.size), np.concatenate([part_of[:1], part_of[keep]])


_N4 = ((-1, 0), (1, 0), (0, -1), (0, 1))
_N8 = _N4 + ((-1, -1), (-1, 1), (1, -1), (1, 1))
_INV_LEN = np.array([1.0] * 4 + [2 ** -0.5] * 4)  # 1 / step length of each neighbour offset


def _grow_to_border(labels: np.ndarray, d: np.ndarray, n: int, fill: float, grow: float,
                    ring_fraction: float, slope: float) -> None:
    """Grow every core (in place) into ``d ≤ fill`` by at most the ring the fill threshold cut off, while the map
    keeps falling toward the new pixel at ≥ ``slope / R`` per px.

    A breadth-first flood over the ring pixels next to the growing cells only (the ring is a thin band, so this
    costs a few ms per 1080² field), alternating 4- and 8-neighbour steps (an octagonal approximation of
    Euclidean distance). A pixel joins the admissible labelled neighbour with the highest distance value — the
    watershed's choice — so touching cells meet at their dip.
    """
    w = labels.shape[1]
    lab = np.pad(labels, 1)
    dp = np.pad(d, 1)
    W = w + 2
    flat_lab = lab.reshape(-1)
    flat_d = dp.reshape(-1)
    area = np.bincount(labels.reshape(-1), minlength=n + 1).astype(np.float64)
    # the map treats the image edge as a mirror (seg.distance.distance_map): a core cut by an edge is half of its
    # cell (a quarter in a corner), so its size is the mirrored one
    for a, b in ((labels[0], labels[-1]), (labels[:, 0], labels[:, -1])):
        area[np.union1d(a, b)] *= 2.0
    radius = np.sqrt(area / np.pi)  # inradius of a disk of that area: an upper bound for elongated cores
    full = np.maximum(radius / (1.0 - fill), 1.0)  # the cell's own R, before the fill threshold eroded it
    limit = np.ceil(fill * full).astype(np.int64)
    limit[0] = 0
    level = np.maximum(ring_fraction / full, grow)  # the cell's ring sits at 1/R: stop below a fraction of it
    level[0] = np.inf
    min_drop = slope / full  # the least fall per px of a cell's map toward a pixel it may take
    floor = float(level[1:].min()) if n else np.inf  # no cell may take a pixel below this
    core = lab > 0
    open2 = (dp > floor) & ~core  # ring pixels not yet taken (the pad is never open)
    near = np.zeros_like(core)  # next to a core (8-neighbours): shifted views, no per-pixel gathers
    inner = near[1:-1, 1:-1]
    for dy, dx in _N8:
        inner |= core[1 + dy:lab.shape[0] - 1 + dy, 1 + dx:W - 1 + dx]
    frontier = np.flatnonzero(open2 & near)
    if frontier.size == 0:
        labels[...] = lab[1:-1, 1:-1]
        return
    open_ = open2.reshape(-1)
    n8 = np.array([dy * W + dx for dy, dx in _N8], np.int64)
    waiting = np.zeros(open_.size, bool)  # in the frontier
    waiting[frontier] = True
    stamp = np.zeros(open_.size, np.int32)  # de-duplicates candidates without sorting them
    for step in range(1, int(limit.max()) + 1):
        if frontier.size == 0:
            break
        k = 8 if step % 2 == 0 else 4  # 4-neighbour steps, then 8: an octagonal approximation of distance
        nb = (frontier[:, None] + n8[None, :k]).reshape(-1)
        nl = flat_lab[nb]
        pair = np.flatnonzero(nl)  # (frontier pixel, labelled neighbour) pairs: the only ones to test
        cell = nl[pair]
        row = pair // k
        dn = flat_d[nb[pair]]
        here = flat_d[frontier[row]]
        ok = ((limit[cell] >= step) & (here > level[cell])
              & ((dn - here) * _INV_LEN[pair % k] >= min_drop[cell]))
        score = np.full(frontier.size * k, -1.0, np.float32)
        score[pair[ok]] = dn[ok]
        best = score.reshape(-1, k).argmax(1)
        first = np.arange(frontier.size) * k + best
        take = score[first] >= 0  # the best admissible neighbour (map values of labelled pixels are > 0)
        new = frontier[take]
        flat_lab[new] = nl[first[take]]
        open_[new] = False
        waiting[new] = False
        cand = (new[:, None] + n8[None, :]).ravel()
        cand = cand[open_[cand] & ~waiting[cand]]  # newly reachable open pixels (each step updates all at once,
        order = np.arange(cand.size, dtype=np.int32)  # so the frontier's order does not matter)
        stamp[cand] = order
        cand = cand[stamp[cand] == order]
        waiting[cand] = True
        frontier = np.concatenate([frontier[~take], cand])
    labels[...] = lab[1:-1, 1:-1]


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """uint16 when the ids fit: half the size of int32 in TIFFs, and napari builds and uploads a 2048² uint16
    labels layer ~2× faster."""
    return labels.astype(np.uint16) if labels.max(initial=0) < np.iinfo(np.uint16).max else labels


def _watershed_by_component(d: np.ndarray, markers: np.ndarray, n: int, parts: np.ndarray,
                            n_parts: int, part_of_marker: np.ndarray) -> np.ndarray:
    """``watershed(-d, markers, mask=fill)`` (up to tie-breaking between equal values), run only where it has
    something to decide.

    A connected part of ``fill`` holding one marker floods entirely to that marker, and one holding none stays
    background, so the (costly) priority flood runs only inside the bounding boxes of parts with two or more
    markers. Labels stay the marker ids 1..n, which are sequential already; ``part_of_marker[i]`` is the fill
    part of marker i.
    """
    per_part = np.bincount(part_of_marker[1:], minlength=n_parts + 1)
    lut = np.zeros(n_parts + 1, np.int32)
    single = np.flatnonzero(per_part == 1)
    if single.size:
        ids = np.arange(1, n + 1, dtype=np.int32)
        one = per_part[part_of_marker[1:]] == 1
        lut[part_of_marker[1:][one]] = ids[one]
    labels = lut[parts]
    multi = np.flatnonzero(per_part[1:] >= 2) + 1
    if multi.size:
        boxes = ndi.find_objects(parts)
        for p in multi:
            sl = boxes[p - 1]
            mask = parts[sl] == p
            ws = watershed(-d[sl], np.where(mask, markers[sl], 0), mask=mask)
            labels[sl][mask] = ws[mask]
    return labels


THRESHOLD_KEYS = ("peak", "fill", "grow", "ring", "slope", "min_size")


def resolve_thresholds(base: Mapping[str, Any], **overrides: float | int | None) -> dict[str, float | int]:
    """A bundle's thresholds (``peak``, ``fill``, ``grow``, ``ring``, ``slope``, ``min_size``) with the overrides
    that are not None. Keys a bundle lacks take the defaults (bundles written before growth, or before ``slope``
    was tuned, grow their cells back with the default rule).
    Unknown override names are an error, so a typo cannot silently fall back to the bundle's value.
    """
    unknown = set(overrides) - set(THRESHOLD_KEYS)
    if unknown:
        raise ValueError(f"unknown threshold(s) {sorted(unknown)}; use {', '.join(THRESHOLD_KEYS)}")
    out: dict[str, float | int] = {"peak": DEFAULT_PEAK_THRESHOLD, "fill": DEFAULT_FILL_THRESHOLD,
                                   "grow": DEFAULT_GROW_THRESHOLD, "ring": DEFAULT_RING_FRACTION,
                                   "slope": GROWTH_SLOPE, "min_size": DEFAULT_MIN_SIZE}
    out.update({k: base[k] for k in THRESHOLD_KEYS if base.get(k) is not None})
    out.update({k: v for k, v in overrides.items() if v is not None})
    out["grow"] = min(float(out["grow"]), float(out["fill"]))  # a lower fill than the bundle's grow: no conflict
    out["min_size"] = int(out["min_size"])
    return out


def labels_with(dist: np.ndarray, thresholds: Mapping[str, Any]) -> np.ndarray:
    """:func:`labels_from_distance` with a thresholds dict as bundles store it — the one post-processing call
    that ``segment``, ``evaluate``, validation, tuning, ``segment-plate`` and napari share."""
    th = resolve_thresholds(thresholds)
    return labels_from_distance(dist, peak_threshold=float(th["peak"]), fill_threshold=float(th["fill"]),
                                min_size=int(th["min_size"]), grow_threshold=float(th["grow"]),
                                ring_fraction=float(th["ring"]), growth_slope=float(th["slope"]))
