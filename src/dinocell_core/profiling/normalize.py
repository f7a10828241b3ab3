"""Well-profile normalisation with pycytominer, as the CPJUMP1 benchmark and Kim et al. do it.

- ``negcon_mad``: per plate, ``pycytominer.normalize(method="mad_robustize")`` fitted on that plate's negcon wells
  (CPJUMP1's ``*_normalized_negcon`` profiles; the benchmark's fudge factor is 0, so epsilon 0 here).
- ``spherize_mad``: ``spherize`` (ZCA-cor) fitted on the negcon wells of all plates, then per-plate
  ``mad_robustize`` on all wells (Kim et al.'s ``spherize_mad_robustize``).
- ``none``: the table as it is.

Features that cannot be normalised (zero spread in some plate's negcon wells) are dropped *before* scaling and
reported, so a division by zero never becomes a silent NaN or a 1e18 outlier that dominates every cosine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dinocell_core.profiling.table import ProfileError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: the normalisation words, spelled here only (settings, CLI choices, the pretraining ``eval:`` section, the Profiles
#: widget read this); numpy, pandas and SciPy load when a table is normalised, so the settings stay light
NORMALIZATIONS = ("negcon_mad", "spherize_mad", "none")
NEGCON_FLAG = "Metadata_negcon"  # 1 for negative-control wells (the benchmark's own column name)
NEGCON_QUERY = f"{NEGCON_FLAG} == 1"
SPHERIZE_METHOD = "ZCA-cor"
SPHERIZE_EPSILON = 1e-6


@dataclass
class Normalized:
    table: pd.DataFrame
    features: list[str]
    dropped: list[str] = field(default_factory=list)  # features removed, with the reason in ``notes``
    notes: list[str] = field(default_factory=list)


def _mad(x: np.ndarray) -> np.ndarray:
    from scipy.stats import median_abs_deviation

    return median_abs_deviation(x, axis=0, nan_policy="omit", scale=1 / 1.4826)


def _constant_in_negcon(df: pd.DataFrame, features: list[str], plate_col: str, per_plate: bool) -> list[str]:
    import numpy as np

    neg = df[df[NEGCON_FLAG] == 1]
    bad: set[str] = set()
    groups = neg.groupby(plate_col, sort=True) if per_plate else [("all", neg)]
    for _, g in groups:
        x = g[features].to_numpy(dtype=np.float64)
        spread = _mad(x) if per_plate else x.std(axis=0)
        bad.update(f for f, s in zip(features, spread) if not s > 0)
    return [f for f in features if f in bad]


def _mad_per_plate(df: pd.DataFrame, features: list[str], meta: list[str], plate_col: str, samples: str,
                   epsilon: float) -> pd.DataFrame:
    import pandas as pd
    from pycytominer import normalize

    parts = []
    for _, g in df.groupby(plate_col, sort=False):
        out = normalize(g, features=features, meta_features=meta, samples=samples, method="mad_robustize",
                        mad_robustize_epsilon=epsilon)
        out.index = g.index
        parts.append(out)
    return pd.concat(parts).loc[df.index]


def normalize_profiles(df: pd.DataFrame, features: list[str], plate_col: str, method: str) -> Normalized:
    """``df`` must carry :data:`NEGCON_FLAG`; rows keep their index and order."""
    import numpy as np

    if method not in NORMALIZATIONS:
        raise ProfileError(f"unknown normalisation {method!r}; use one of {', '.join(NORMALIZATIONS)}")
    meta = [c for c in df.columns if c not in features]
    if method == "none":
        return Normalized(df.copy(), list(features))
    notes: list[str] = []
    bad = _constant_in_negcon(df, features, plate_col, per_plate=method == "negcon_mad")
    if bad:
        where = "some plate's negcon wells (MAD 0)" if method == "negcon_mad" else "the negcon wells (variance 0)"
        notes.append(f"{len(bad)} feature(s) dropped: constant in {where}, e.g. {bad[:3]}")
    keep = [f for f in features if f not in set(bad)]
    if not keep:
        raise ProfileError(f"no feature can be normalised with {method}: every feature is constant in the negcon "
                           "wells")
    work = df[meta + keep]
    if method == "negcon_mad":
        out = _mad_per_plate(work, keep, meta, plate_col, NEGCON_QUERY, epsilon=0.0)
    else:
        from pycytominer import normalize

        n_neg = int((work[NEGCON_FLAG] == 1).sum())
        if n_neg <= len(keep):
            raise ProfileError(f"spherize_mad fits a {len(keep)}×{len(keep)} whitening on {n_neg} negcon wells: it "
                               "needs more negcon wells than features (use negcon_mad, or fewer features)")
        try:
            sph = normalize(work, features=keep, meta_features=meta, samples=NEGCON_QUERY, method="spherize",
                            spherize_method=SPHERIZE_METHOD, spherize_epsilon=SPHERIZE_EPSILON)
        except ValueError as exc:
            raise ProfileError(f"spherize_mad: pycytominer could not sphere the negcon wells: {exc}") from None
        sph.index = work.index
        flat = _constant_in_negcon(sph.assign(**{NEGCON_FLAG: 1}), keep, plate_col, per_plate=True)
        if flat:
            notes.append(f"{len(flat)} sphered feature(s) dropped: MAD 0 on some plate, e.g. {flat[:3]}")
            keep = [f for f in keep if f not in set(flat)]
            sph = sph[meta + keep]
        out = _mad_per_plate(sph, keep, meta, plate_col, "all", epsilon=0.0)
    x = out[keep].to_numpy(dtype=np.float64)
    finite = np.isfinite(x).all(axis=0)
    if not finite.all():
        gone = [f for f, ok in zip(keep, finite) if not ok]
        notes.append(f"{len(gone)} feature(s) dropped: non-finite after {method}, e.g. {gone[:3]}")
        keep = [f for f in keep if f not in set(gone)]
        out = out[meta + keep]
    return Normalized(out, keep, [f for f in features if f not in set(keep)], notes)
