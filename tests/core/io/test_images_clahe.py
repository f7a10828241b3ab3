"""CLAHE at 16-bit precision that honours its clip limit (OpenCV's 16-bit CLAHE floors the clip to 1 count)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dinocell_core.io.images import apply_clahe


def field(size: int = 540, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cells = ((yy - size * 0.45) ** 2 + (xx - size * 0.4) ** 2) < (size * 0.13) ** 2
    return np.clip(0.2 + 0.1 * np.sin(xx / 40) + 0.05 * rng.random((size, size)) + 0.3 * cells, 0, 1)


def test_clip_limit_changes_the_output_where_opencv_16_bit_does_not() -> None:
    img = field()
    u16 = (img * 65535).astype(np.uint16)
    cv = [cv2.createCLAHE(clipLimit=c, tileGridSize=(8, 8)).apply(u16) for c in (1.0, 2.0, 3.0)]
    assert all(np.array_equal(cv[0], o) for o in cv[1:])  # the defect: limits 1–3 identical
    ours = [apply_clahe(img, c) for c in (1.0, 2.0, 3.0)]
    diffs = [float(np.abs(ours[i] - ours[i + 1]).mean()) for i in range(2)]
    assert min(diffs) > 0.005, diffs
    # a higher limit equalises more: the contrast (std) grows with the limit
    stds = [float(o.std()) for o in ours]
    assert stds[0] < stds[1] < stds[2]


def test_matches_opencv_on_8_bit_data() -> None:
    """On 8-bit data the clip limit means what it means in OpenCV (within the half-bin of a continuous CDF)."""
    u8 = (field(seed=1) * 255).round().astype(np.uint8)
    for c in (1.0, 2.0, 4.0):
        ref = cv2.createCLAHE(clipLimit=c, tileGridSize=(8, 8)).apply(u8) / 255.0
        ours = apply_clahe(u8 / 255.0, c)
        assert np.abs(ours - ref).mean() < 0.012 and np.abs(ours - ref).max() < 0.03, c


def test_16_bit_detail_is_not_posterised() -> None:
    img = field(256) * 0.01 + 0.5  # all of it inside two or three 8-bit levels
    out = apply_clahe(img, 2.0)
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert len(np.unique(out)) > 1000  # 8-bit CLAHE would leave ≤ 3 values
    assert np.corrcoef(img.ravel(), out.ravel())[0, 1] > 0.5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="clip_limit"):
        apply_clahe(np.zeros((8, 8)), 0)
    with pytest.raises(ValueError, match="2-D"):
        apply_clahe(np.zeros((2, 8, 8)))
