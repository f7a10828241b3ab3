"""dinocell_core.profiling.judge on planted features with known answers: k-NN never uses the query's own well, the
cross-plate probe and R² see what is there and nothing else, and the paired bootstrap interval covers 0 for equal
models and lies above it for a better one."""

from __future__ import annotations

import numpy as np
import pytest

from dinocell_core.profiling.judge import (
    balanced_accuracy,
    cross_plate_r2,
    knn_hits,
    paired_bootstrap,
    probe_hits,
)


def planted(signal: float, seed: int = 0, plates: int = 4, wells: int = 8, sites: int = 4):
    """Sites of ``plates`` × ``wells`` wells, label per well, one feature carrying the label with ``signal``."""
    rng = np.random.default_rng(seed)
    n = plates * wells * sites
    plate = np.repeat(np.arange(plates), wells * sites).astype(str)
    well = np.repeat(np.arange(plates * wells), sites).astype(str)
    y = np.repeat(rng.permutation(np.tile([0, 1], plates * wells // 2)), sites)
    x = rng.normal(size=(n, 6))
    x[:, 0] += signal * (2 * y - 1)
    return x, y, well, plate


def test_knn_hits_ignore_the_query_s_own_well():
    # every site's only look-alikes are the other sites of its well: with them excluded, k-NN must miss
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    degrees = np.radians([0, 1, 90, 89, 85, 84, 5, 6])  # wells a/d and b/c are close, each well's twin closer
    x = np.stack([np.cos(degrees), np.sin(degrees)], axis=1)
    assert not knn_hits(x, y, groups, k=1).any()
    assert knn_hits(x, y, np.arange(8).astype(str), k=1).all()  # with one site per group the twin is allowed


def test_probe_and_r2_find_planted_signal_and_nothing_else():
    x, y, wells, plates = planted(signal=3.0)
    hits = probe_hits(x, y, plates)
    assert np.isnan(hits[np.isin(plates, ["0", "1"])]).all()  # fitted there, never scored there
    assert balanced_accuracy(hits, y) > 0.95
    x0, y0, _, p0 = planted(signal=0.0, seed=1)
    assert abs(balanced_accuracy(probe_hits(x0, y0, p0), y0) - 0.5) < 0.12
    target = x[:, 1] * 2 + 0.1 * np.random.default_rng(2).normal(size=len(y))
    assert cross_plate_r2(x, target, plates) > 0.95
    assert cross_plate_r2(x[:, 2:], target, plates) < 0.1
    with pytest.raises(ValueError, match="≥ 4 plates"):
        probe_hits(x[:64], y[:64], plates[:64])


def test_paired_bootstrap_covers_zero_for_equal_models_and_not_for_a_better_one():
    _, y, wells, _ = planted(signal=0.0)
    rng = np.random.default_rng(0)
    coin = [rng.random(len(y)) < 0.6 for _ in range(3)]
    same = paired_bootstrap(coin, {"itself": coin}, y, wells, n_boot=500)
    assert same.point == 0.0 and same.low == 0.0 and same.high == 0.0
    other = [rng.random(len(y)) < 0.6 for _ in range(3)]
    tie = paired_bootstrap(coin, {"other": other}, y, wells, n_boot=500)
    assert tie.low < 0 < tie.high or abs(tie.point) < 0.05
    better = [rng.random(len(y)) < 0.9 for _ in range(3)]
    win = paired_bootstrap(better, {"a": coin, "b": other}, y, wells, n_boot=500)
    assert 0.15 < win.point and win.low > 0.1
    # the best baseline is chosen per draw: adding a weaker baseline never raises the interval
    worse = [rng.random(len(y)) < 0.3 for _ in range(3)]
    same_with_worse = paired_bootstrap(better, {"a": coin, "b": other, "c": worse}, y, wells, n_boot=500)
    assert same_with_worse.low == pytest.approx(win.low) and same_with_worse.point == pytest.approx(win.point)
