"""Threshold search on cached distance maps: it beats the configured values when they are wrong for the maps,
keeps them on a tie, and scores crowd regions as COCO does."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from dinocell_core.seg.config import GROWTH_SLOPE
from dinocell_core.seg.distance import distance_map
from dinocell_core.seg.tune import score_thresholds, tune_thresholds
from tests.helpers.shapes import big_touching_disks, ellipse_cells, touching_disks

CONFIGURED = {"peak": 0.47, "fill": 0.09, "grow": 0.01, "ring": 0.5, "slope": 0.8, "min_size": 0}


def blurred(lab: np.ndarray, seed: int) -> np.ndarray:
    """A map like an over-smooth network's: blurred and noisy, so cells bleed past their borders."""
    rng = np.random.default_rng(seed)
    d = ndi.gaussian_filter(distance_map(lab), 2.0) + ndi.gaussian_filter(rng.normal(0, 0.1, lab.shape), 1.0)
    return np.clip(d, 0, 1).astype(np.float32)


def test_search_beats_wrong_defaults_and_records_every_try() -> None:
    truths = [touching_disks(size=160, n=20, seed=s) for s in range(3)] + [big_touching_disks()]
    maps = [blurred(t, i) for i, t in enumerate(truths)]
    before = score_thresholds(maps, truths, CONFIGURED)
    res = tune_thresholds(maps, truths, start=CONFIGURED)
    assert res["metrics"]["ap_mean"] > before["ap_mean"] + 0.02, (before["ap_mean"], res["metrics"]["ap_mean"])
    assert res["thresholds"] != CONFIGURED
    assert len(res["tried"]) > 50 and res["tried"][0]["thresholds"] == CONFIGURED
    best = max(res["tried"], key=lambda t: (round(t["ap_mean"], 6), round(t["seg"], 6)))
    assert best["ap_mean"] == res["metrics"]["ap_mean"]


def test_perfect_maps_score_full_ap_and_the_search_keeps_values_on_a_tie() -> None:
    truths = [big_touching_disks()]
    maps = [distance_map(t) for t in truths]
    assert score_thresholds(maps, truths, CONFIGURED)["ap@0.90"] == 1.0
    res = tune_thresholds(maps, truths, start=CONFIGURED)  # may still gain SEG (a lower fill), never lose AP
    assert res["metrics"]["ap@0.90"] == 1.0
    again = tune_thresholds(maps, truths, start=res["thresholds"])  # nothing beats the optimum: it is kept
    assert again["thresholds"] == res["thresholds"] and again["metrics"] == res["metrics"]


def test_crowd_regions_are_not_scored() -> None:
    lab = big_touching_disks()
    crowd = lab == 1
    truth = np.where(crowd, 0, lab)
    d = distance_map(lab)  # the map still shows the crowd's cell: without the crowd mask it is a false positive
    assert score_thresholds([d], [truth], CONFIGURED)["ap@0.50"] < 1.0
    assert score_thresholds([d], [truth], CONFIGURED, [crowd])["ap@0.50"] == 1.0


def test_search_tunes_the_growth_slope_where_the_default_overshoots() -> None:
    """Blurred (σ 2) + noisy maps: the default slope 0.8 still grows into the tails; the search picks another
    slope, which scores better in mean AP and AP@0.9 than the same search with the slope fixed at its default."""
    truths = [ellipse_cells(), big_touching_disks(), *(touching_disks(size=160, n=20, seed=s) for s in range(3))]
    maps = [blurred(t, i) for i, t in enumerate(truths)]
    fixed = tune_thresholds(maps, truths, slopes=(GROWTH_SLOPE,), start=CONFIGURED)
    tuned = tune_thresholds(maps, truths, start=CONFIGURED)
    print(f"slope fixed at {GROWTH_SLOPE}: {fixed['thresholds']} AP@0.9 {fixed['metrics']['ap@0.90']:.3f} mean AP "
          f"{fixed['metrics']['ap_mean']:.3f}; slope tuned: {tuned['thresholds']} AP@0.9 "
          f"{tuned['metrics']['ap@0.90']:.3f} mean AP {tuned['metrics']['ap_mean']:.3f}")
    assert tuned["thresholds"]["slope"] != GROWTH_SLOPE
    assert tuned["metrics"]["ap_mean"] > fixed["metrics"]["ap_mean"]
    assert tuned["metrics"]["ap@0.90"] > fixed["metrics"]["ap@0.90"] + 0.05
    assert {t["thresholds"]["slope"] for t in tuned["tried"]} == {0.5, 0.65, 0.8, 0.9, 1.0}


def test_a_start_without_slope_is_scored_at_the_default() -> None:
    """An old bundle's thresholds (no ``slope`` key) start the search as the default rule."""
    truths = [big_touching_disks()]
    maps = [distance_map(t) for t in truths]
    old = {k: v for k, v in CONFIGURED.items() if k != "slope"}
    res = tune_thresholds(maps, truths, peaks=(0.47,), fills=(0.09,), grows=(0.01,), rings=(), slopes=(),
                          min_sizes=(), start=old)
    assert [t["thresholds"] for t in res["tried"]] == [CONFIGURED]


def test_when_no_growth_wins_the_best_growing_setting_is_refined_too() -> None:
    """Ring and slope act on growth only: on blurred small cells no growth wins the first round, so the search also
    tries every ring and slope on the best growing setting, and keeps the overall best."""
    truths = [touching_disks(size=160, n=20, seed=s) for s in range(3)]
    maps = [np.clip(ndi.gaussian_filter(distance_map(t), 2.0), 0, 1).astype(np.float32) for t in truths]
    res = tune_thresholds(maps, truths, start=CONFIGURED)
    assert res["thresholds"]["grow"] == res["thresholds"]["fill"]  # no growth won
    growing = [t for t in res["tried"] if t["thresholds"]["grow"] < t["thresholds"]["fill"]]
    assert {t["thresholds"]["slope"] for t in growing} == {0.5, 0.65, 0.8, 0.9, 1.0}
    assert {t["thresholds"]["ring"] for t in growing} >= {0.4, 0.5, 0.6, 0.75}
    best = max(res["tried"], key=lambda t: (round(t["ap_mean"], 6), round(t["seg"], 6)))
    assert best["ap_mean"] == res["metrics"]["ap_mean"] and best["thresholds"] == res["thresholds"]
