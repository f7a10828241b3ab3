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

from dinocell_core.seg.config import (
    DEFAULT_RING_FRACTION,
    GROWTH_SLOPE,
    TUNE_FILL,
    TUNE_GROW,
    TUNE_MIN_SIZE,
    TUNE_PEAK,
    TUNE_RING,
    TUNE_SLOPE,
)
from dinocell_core.seg.distance import labels_with, resolve_thresholds
from dinocell_core.seg.metrics import (
    AP_THRESHOLDS,
    drop_crowd_predictions,
    evaluate_pairs,
)


def score_thresholds(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], thresholds: dict[str, Any],
                     crowds: Sequence[np.ndarray | None] | None = None) -> dict[str, Any]:
    """Pooled scores of one threshold setting over cached distance maps (crowd regions not scored)."""
    crowds = crowds if crowds is not None else [None] * len(maps)
    pairs = [(gt, drop_crowd_predictions(labels_with(d, thresholds), c)) for d, gt, c in zip(maps, truths, crowds)]
    return evaluate_pairs(pairs, AP_THRESHOLDS).as_dict()


def tune_thresholds(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                    peaks: Sequence[float] = TUNE_PEAK, fills: Sequence[float] = TUNE_FILL,
                    grows: Sequence[float | None] = TUNE_GROW, rings: Sequence[float] = TUNE_RING,
                    slopes: Sequence[float] = TUNE_SLOPE, min_sizes: Sequence[int] = TUNE_MIN_SIZE,
                    crowds: Sequence[np.ndarray | None] | None = None,
                    start: dict[str, Any] | None = None) -> dict[str, Any]:
    """Grid search: every (peak, fill, grow) with the default ring and slope and min_size 0, then ring, then slope
    for the best so far (and for the best growing one when no growth wins), then min_size (a coordinate search:
    ~90 settings instead of ~5000).

    ``start`` (the configured thresholds) is scored first and kept unless a combination beats it strictly.

    Returns ``{"thresholds": best, "metrics": its scores, "tried": [{thresholds, ap_mean, seg, ap@0.50}, ...]}``.
    """
    if len(maps) != len(truths) or not maps:
        raise ValueError(f"need one ground truth per distance map and at least one map, got {len(maps)} / "
                         f"{len(truths)}")
    tried: list[dict[str, Any]] = []
    scores: dict[tuple[tuple[str, Any], ...], tuple[tuple[float, float], dict[str, Any]]] = {}

    def consider(th: dict[str, Any]) -> tuple[float, float]:
        """Score ``th`` once (repeats come from the cache); returns its (mean AP, SEG) key."""
        name = tuple(sorted(th.items()))
        if name not in scores:
            m = score_thresholds(maps, truths, th, crowds)
            tried.append({"thresholds": th, "ap_mean": m["ap_mean"], "seg": m["seg"], "ap@0.50": m["ap@0.50"]})
            scores[name] = ((round(float(m["ap_mean"]), 6), round(float(m["seg"]), 6)), m)
        return scores[name][0]

    def refine(key: tuple[float, float], th: dict[str, Any], name: str,
               values: Sequence[float]) -> tuple[tuple[float, float], dict[str, Any]]:
        """The best of ``th`` and ``th`` with ``name`` set to each of ``values`` (ties keep the earlier)."""
        for v in values:
            cand = {**th, name: int(v) if name == "min_size" else float(v)}
            k = consider(cand)
            if k > key:
                key, th = k, cand
        return key, th

    firsts: list[tuple[tuple[float, float], dict[str, Any]]] = []
    if start is not None:
        th = resolve_thresholds(start)  # keys it lacks (an old bundle's) at their defaults
        firsts.append((consider(th), th))
    for peak in peaks:
        for fill in fills:
            if fill >= peak:
                continue
            for grow in grows:
                g = fill if grow is None else min(float(grow), fill)
                th = {"peak": float(peak), "fill": float(fill), "grow": float(g), "ring": DEFAULT_RING_FRACTION,
                      "slope": GROWTH_SLOPE, "min_size": 0}
                firsts.append((consider(th), th))
    best = max(firsts, key=lambda kt: kt[0])  # the first of equal keys
    # ring and slope only act on growth: when no growth wins the first round, the best growing setting is
    # refined too (a tuned slope can beat no growth where the default one overshoots)
    bases = [best]
    growing = [kt for kt in firsts if kt[1]["grow"] < kt[1]["fill"]]
    if best[1]["grow"] >= best[1]["fill"] and growing:
        bases.append(max(growing, key=lambda kt: kt[0]))
    for base in bases:
        cand = refine(*refine(*base, "ring", rings), "slope", slopes)
        if cand[0] > best[0]:
            best = cand
    best = refine(*best, "min_size", min_sizes)
    best = (best[0], best[1], scores[tuple(sorted(best[1].items()))][1])
    return {"thresholds": best[1], "metrics": best[2], "tried": tried}
