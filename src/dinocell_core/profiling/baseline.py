"""The hand-crafted floor every backbone must beat: per-view intensity, texture and object statistics of a tile.

CellProfiler-like in spirit and cheap: intensity percentiles and moments, gradient and Laplacian energy, band-pass
energy at two scales, and the count and mean size of bright objects (nuclei on the DNA channel). Run it with
``--channels each`` to get per-channel statistics of the five fluorescent stains.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

STATS = ("mean", "std", "p05", "p25", "p50", "p75", "p95", "skew", "grad", "laplace", "dog2", "dog8",
         "fg_fraction", "objects_per_kpx", "object_area")


def tile_statistics(tile: np.ndarray) -> np.ndarray:
    """:data:`STATS` of one 2-D float32 tile in [0, 1]."""
    t = tile.astype(np.float32, copy=False)
    mean, std = float(t.mean()), float(t.std())
    q = np.percentile(t, [5, 25, 50, 75, 95])
    skew = float(((t - mean) ** 3).mean() / (std ** 3)) if std > 0 else 0.0
    gy, gx = ndi.sobel(t, 0), ndi.sobel(t, 1)
    grad = float(np.hypot(gx, gy).mean())
    lap = float(ndi.laplace(t).var())
    g1, g2, g8 = (ndi.gaussian_filter(t, s) for s in (1.0, 2.0, 8.0))
    dog2, dog8 = float(np.abs(g1 - g2).mean()), float(np.abs(g2 - g8).mean())
    fg = g1 > max(mean + std, 1e-6)
    _, n = ndi.label(fg)
    area = float(fg.sum()) / n if n else 0.0
    return np.array([mean, std, *q, skew, grad, lap, dog2, dog8, float(fg.mean()), 1000.0 * n / t.size, area],
                    dtype=np.float32)


class BaselineEmbedder:
    """Same interface as :class:`dinocell_core.profiling.embed.BackboneEmbedder`."""

    name = "baseline"
    feature_names = STATS

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return np.stack([tile_statistics(t) for t in tiles]) if len(tiles) else np.zeros((0, len(STATS)),
                                                                                           np.float32)

    def describe(self) -> dict[str, object]:
        return {"kind": "baseline", "stats": list(STATS)}
