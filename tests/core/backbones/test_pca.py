"""dinocell_core.backbones.pca: PCA of patch features → RGB."""

from __future__ import annotations

import numpy as np

from dinocell_core.backbones.pca import pca_rgb


def test_pca_rgb_separates_regions_and_is_deterministic():
    rng = np.random.default_rng(0)
    d = 48
    a, b = rng.normal(size=d), rng.normal(size=d)
    feats = rng.normal(scale=0.05, size=(20, 30, d)).astype(np.float32)
    feats[:, :15] += a
    feats[:, 15:] += b
    rgb, explained = pca_rgb(feats)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    left, right = rgb[:, :15, 0].mean(), rgb[:, 15:, 0].mean()
    assert abs(left - right) > 0.8  # PC1 is the left/right difference
    assert explained[0] > 0.9 and explained.sum() <= 1.0 + 1e-6
    rgb2, _ = pca_rgb(feats.copy())
    np.testing.assert_array_equal(rgb, rgb2)
