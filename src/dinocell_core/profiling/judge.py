"""Judge a representation on held-out plates with the figures a learning claim needs, and their uncertainty.

Per site: leave-one-well-out k-NN (cosine, balanced accuracy, chance 0.5) and a cross-plate linear probe (ridge
fitted on half the plates, the penalty chosen between two training plates, scored on the other half), plus the
cross-plate R² of a nuisance (e.g. log detector gamma) to say what else the features carry. Claims compare models
with a paired bootstrap over *wells* (sites of one well are not independent): each replicate resamples wells with
replacement, scores every model on the same draw (averaging its seeds), and takes the difference between the
candidate and the best baseline *of that draw*, so choosing the best baseline is part of the interval.

Why by hand: scikit-learn is not a dependency, and the bootstrap must be paired over wells and seeds, which no
library call does; the ridge is three lines of linear algebra.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LAMBDAS = 10.0 ** np.arange(-1, 5)


def zscore(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x - x.mean(0)) / (x.std(0) + 1e-9)


def knn_hits(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int = 5) -> np.ndarray:
    """Per site: does the majority of its ``k`` cosine neighbours from *other* wells share its label?"""
    x = np.asarray(x, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    sim[groups[:, None] == groups[None, :]] = -np.inf
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    hits = np.empty(len(y), bool)
    for i, nb in enumerate(idx):
        values, counts = np.unique(y[nb], return_counts=True)
        hits[i] = values[counts.argmax()] == y[i]
    return hits


def balanced_accuracy(hits: np.ndarray, y: np.ndarray) -> float:
    """Mean recall over classes of the scored sites (NaN hits are unscored)."""
    scored = ~np.isnan(hits.astype(np.float64))
    return float(np.mean([hits[scored & (y == c)].mean() for c in np.unique(y[scored])]))


def _ridge(x_tr: np.ndarray, t_tr: np.ndarray, x_te: np.ndarray, lam: float) -> np.ndarray:
    m = t_tr.mean()
    beta = np.linalg.solve(x_tr.T @ x_tr + lam * np.eye(x_tr.shape[1]), x_tr.T @ (t_tr - m))
    return x_te @ beta + m


def _split(plates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    names = sorted(set(plates))
    if len(names) < 4:
        raise ValueError(f"a cross-plate fit needs ≥ 4 plates (2 to fit and choose the penalty, 2 to score), got "
                         f"{len(names)}")
    half = len(names) // 2
    return (np.isin(plates, names[:half]), np.isin(plates, names[half:]), plates == names[0], plates == names[1])


def _cross_plate(x: np.ndarray, t: np.ndarray, plates: np.ndarray,
                 score: Callable[[np.ndarray, np.ndarray], float]) -> tuple[np.ndarray, np.ndarray]:
    """Predictions on the scored half of the plates (and its mask), the penalty chosen on the training half."""
    tr, te, a, b = _split(plates)
    lam = max(LAMBDAS, key=lambda lam: score(_ridge(x[a], t[a], x[b], lam), t[b]))
    return _ridge(x[tr], t[tr], x[te], lam), te


def probe_hits(x: np.ndarray, y: np.ndarray, plates: np.ndarray) -> np.ndarray:
    """Per site of the scored plates: is the two-class linear probe right? (NaN on the training plates.)

    Targets ±1 divided by their class share: least squares on them is Fisher's discriminant with both classes
    weighing equally."""
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(f"the probe scores two classes, got {len(classes)}")
    sign = np.where(y == classes[1], 1.0, -1.0)
    t = sign * np.where(sign > 0, 1.0 / (sign > 0).mean(), 1.0 / (sign < 0).mean())

    def acc(pred: np.ndarray, target: np.ndarray) -> float:
        hit = np.sign(pred) == np.sign(target)
        return float(np.mean([hit[np.sign(target) == c].mean() for c in (-1.0, 1.0)]))

    pred, te = _cross_plate(zscore(x), t, plates, acc)
    hits = np.full(len(y), np.nan)
    hits[te] = np.sign(pred) == sign[te]
    return hits


def cross_plate_r2(x: np.ndarray, target: np.ndarray, plates: np.ndarray) -> float:
    """R² on the scored plates of a ridge fitted on the others: how much of ``target`` the features carry."""

    def r2(pred: np.ndarray, t: np.ndarray) -> float:
        return float(1.0 - ((pred - t) ** 2).sum() / ((t - t.mean()) ** 2).sum())

    pred, te = _cross_plate(zscore(x), np.asarray(target, np.float64), plates, r2)
    return r2(pred, np.asarray(target, np.float64)[te])


@dataclass(frozen=True)
class Interval:
    point: float  # the difference on the real wells
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.point:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _bootstrap_scores(hits: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each seed's hits [S, N] under each replicate's site weights [B, N] → [B] (seed mean)."""
    h = np.nan_to_num(hits.astype(np.float64), nan=0.0)
    scored = ~np.isnan(hits.astype(np.float64))
    per_class = []
    for c in np.unique(y):
        m = scored & (y == c)[None, :]  # [S, N]
        num = weights @ (h * m).T  # [B, S]
        den = weights @ m.T.astype(np.float64)
        per_class.append(num / np.maximum(den, 1e-12))
    return np.mean(per_class, axis=0).mean(axis=1)


def paired_bootstrap(candidate: Sequence[np.ndarray], baselines: Mapping[str, Sequence[np.ndarray]], y: np.ndarray,
                     groups: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Interval of (candidate − best baseline) balanced accuracy, resampling wells; each model is a list of per-seed
    hit arrays over the same sites (NaN = unscored)."""
    wells, inverse = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(wells), np.full(len(wells), 1.0 / len(wells)), size=n_boot).astype(np.float64)
    draws = np.vstack([np.ones(len(wells)), counts])[:, inverse]  # row 0: the real wells

    def scores(model: Sequence[np.ndarray]) -> np.ndarray:
        return _bootstrap_scores(np.stack([np.asarray(h) for h in model]), y, draws)

    diff = scores(candidate) - np.max([scores(m) for m in baselines.values()], axis=0)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(diff[1:], [tail, 100 - tail])
    return Interval(float(diff[0]), float(low), float(high))
