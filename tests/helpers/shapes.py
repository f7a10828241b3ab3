"""Hand-made label images with known answers (touching disks, ellipses) and noisy distance maps."""

from __future__ import annotations

import numpy as np

from dinocell_core.seg.distance import distance_map


def touching_disks(size: int = 128, n: int = 12, seed: int = 0) -> np.ndarray:
    """Random disks cut by their Voronoi borders where they overlap: convex cells, many touching."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(8, size - 8, (n, 2))
    radii = rng.uniform(6, 14, n)
    d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    nearest = d2.argmin(0)
    inside = np.take_along_axis(d2, nearest[None], 0)[0] <= radii[nearest] ** 2
    return np.where(inside, nearest + 1, 0).astype(np.int32)


def ellipse_cells(size: int = 192) -> np.ndarray:
    """Hand-made elongated cells (axes up to 70 × 9 px, several orientations), some touching end to side."""
    yy, xx = np.mgrid[:size, :size].astype(float)
    lab = np.zeros((size, size), np.int32)
    specs = [(40, 50, 35, 9, 0.3), (60, 120, 30, 7, -0.5), (120, 60, 45, 10, 1.2), (140, 140, 25, 12, 0.0),
             (150, 100, 20, 6, 1.57), (90, 80, 18, 14, 0.8), (30, 150, 28, 8, 2.0)]
    for i, (cy, cx, a, b, th) in enumerate(specs, start=1):
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        lab[(u / a) ** 2 + (v / b) ** 2 <= 1] = i  # later cells are drawn over earlier ones: touching borders
    return lab


def big_touching_disks(size: int = 256) -> np.ndarray:
    """Disks of radius 12–45 px, where the old fill threshold cut the widest rings, most of them touching."""
    yy, xx = np.mgrid[:size, :size]
    specs = [(60, 60, 45), (60, 150, 45), (150, 60, 30), (140, 130, 25), (200, 200, 40), (120, 210, 20),
             (220, 110, 12), (25, 230, 15)]
    lab = np.zeros((size, size), np.int32)
    for i, (cy, cx, r) in enumerate(specs, start=1):
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = i
    return lab


def blurred_map(lab: np.ndarray, sigma: float, noise: float, seed: int) -> np.ndarray:
    """A map like an over-smooth network's: blurred (cells bleed past their borders) plus smooth noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    d = ndi.gaussian_filter(distance_map(lab), sigma) + ndi.gaussian_filter(rng.normal(0, noise, lab.shape), 1.0)
    return np.clip(d, 0, 1).astype(np.float32)
