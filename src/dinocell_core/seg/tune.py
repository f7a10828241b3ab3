"""Choose the post-processing thresholds of one model on its validation images (after decoder training).

The network runs once per image; the search re-thresholds the cached distance maps only. Objective: mean AP over
IoU 0.50…0.95 (pooled over images), ties broken by SEG — so the winner is the setting that fits cell borders
best, not just the one that finds the most cells at IoU 0.5. Every tried combination is returned, so the bundle
records how the choice was made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dinocell_core.seg.config import DEFAULT_RING_FRACTION, TUNE_FILL, TUNE_GROW, TUNE_MIN_SIZE, TUNE_PEAK, TUNE_RING
from dinocell_core.seg.distance import labels_with
from dinocell_core.seg.metrics import AP_THRESHOLDS, drop_crowd_predictions, evaluate_pairs


def score_thresholds(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], thresholds: dict[str, Any],
                     crowds: Sequence[np.ndarray | None] | None = None) -> dict[str, Any]:
    """Pooled scores of one threshold setting over cached distance maps (crowd regions not scored)."""
    crowds = crowds if crowds is not None else [None] * len(maps)
    pairs = [(gt, drop_crowd_predictions(labels_with(d, thresholds), c)) for d, gt, c in zip(maps, truths, crowds)]
    return evaluate_pairs(pairs, AP_THRESHOLDS).as_dict()


def tune_thresholds(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                    peaks: Sequence[float] = TUNE_PEAK, fills: Sequence[float] = TUNE_FILL,
                    grows: Sequence[float | None] = TUNE_GROW, rings: Sequence[float] = TUNE_RING,
                    min_sizes: Sequence[int] = TUNE_MIN_SIZE,
                    crowds: Sequence[np.ndarray | None] | None = None,
                    start: dict[str, Any] | None = None) -> dict[str, Any]:
    """Grid search: every (peak, fill, grow) with the default ring and min_size 0, then ring, then min_size for
    the best so far (a coordinate search: ~80 settings instead of ~1000).

    ``start`` (the configured thresholds) is scored first and kept unless a combination beats it strictly.

    Returns ``{"thresholds": best, "metrics": its scores, "tried": [{thresholds, ap_mean, seg, ap@0.50}, ...]}``.
    """
    if len(maps) != len(truths) or not maps:
        raise ValueError(f"need one ground truth per distance map and at least one map, got {len(maps)} / "
                         f"{len(truths)}")
    tried: list[dict[str, Any]] = []
    best: tuple[tuple[float, float], dict[str, Any], dict[str, Any]] | None = None

    def consider(th: dict[str, Any]) -> None:
        nonlocal best
        m = score_thresholds(maps, truths, th, crowds)
        tried.append({"thresholds": th, "ap_mean": m["ap_mean"], "seg": m["seg"], "ap@0.50": m["ap@0.50"]})
        key = (round(float(m["ap_mean"]), 6), round(float(m["seg"]), 6))
        if best is None or key > best[0]:
            best = (key, th, m)

    if start is not None:
        consider({k: start[k] for k in ("peak", "fill", "grow", "ring", "min_size")})
    for peak in peaks:
        for fill in fills:
            if fill >= peak:
                continue
            for grow in grows:
                g = fill if grow is None else min(float(grow), fill)
                th = {"peak": float(peak), "fill": float(fill), "grow": float(g), "ring": DEFAULT_RING_FRACTION,
                      "min_size": 0}
                if any(t["thresholds"] == th for t in tried):
                    continue
                consider(th)
    assert best is not None
    for ring in rings:
        th = {**best[1], "ring": float(ring)}
        if not any(t["thresholds"] == th for t in tried):
            consider(th)
    for ms in min_sizes:
        th = {**best[1], "min_size": int(ms)}
        if not any(t["thresholds"] == th for t in tried):
            consider(th)
    return {"thresholds": best[1], "metrics": best[2], "tried": tried}
