"""A 2-D map of well profiles (PCA, or UMAP when installed) with each well's replicate-retrieval result.

What the napari Profiles widget shows; computed here (no Qt) so the widget stays a view. Wells are normalised the
way the benchmark normalises them before projecting, so plate effects do not dominate the picture.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dinocell_core.profiling.evaluate import EvalSettings, evaluate_profiles, prepare
from dinocell_core.profiling.normalize import NEGCON_FLAG, normalize_profiles
from dinocell_core.profiling.report import SUMMARY, task_csv
from dinocell_core.profiling.table import ProfileError, feature_matrix, read_profiles

METHODS = ("PCA", "UMAP")
UMAP_MISSING = "UMAP needs the umap-learn package: pip install -c constraints.txt -e \".[umap]\" (or umap-learn)"


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class WellMap:
    coords: np.ndarray  # [n_wells, 2]
    meta: pd.DataFrame  # the wells' metadata (+ Metadata_negcon), row-aligned with coords
    results: pd.DataFrame  # replicate retrieval: perturbation, mAP, p, q, retrieved
    method: str
    explained: tuple[float, ...] = ()  # PCA: variance fraction of the 2 components


def project(x: np.ndarray, method: str = "PCA", seed: int = 0) -> tuple[np.ndarray, tuple[float, ...]]:
    if method == "UMAP":
        if not umap_available():
            raise ProfileError(f"{UMAP_MISSING}; or use PCA")
        if len(x) < 4:
            raise ProfileError(f"UMAP needs at least 4 wells, got {len(x)}; use PCA")
        import umap

        # umap's default of 15 neighbours must stay below the number of wells of a small table
        model = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1)
        return model.fit_transform(x).astype(np.float32), ()
    if method != "PCA":
        raise ProfileError(f"unknown projection {method!r}; use one of {METHODS}")
    xc = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    k = min(2, len(s))
    coords = np.zeros((len(x), 2), np.float32)
    coords[:, :k] = (u[:, :k] * s[:k]).astype(np.float32)
    var = s ** 2
    total = float(var.sum()) or 1.0
    return coords, tuple(float(v / total) for v in var[:k])


def iter_well_map(profiles: str | Path, evaluation: str | Path | None = None, settings: EvalSettings | None = None,
                  method: str = "PCA") -> Iterator[tuple[int, int, str] | WellMap]:
    """Yields (done, total, step) progress, then the :class:`WellMap`. With ``evaluation`` (a ``profile
    evaluate`` folder) its results are read instead of recomputed."""
    s = settings or EvalSettings()
    yield 0, 3, "reading"
    df = read_profiles(profiles)
    kept, feats, _ = prepare(df, s, str(profiles))
    norm = normalize_profiles(kept, feats, s.plate_col, s.normalize)
    yield 1, 3, "evaluating"
    if evaluation is not None:
        path = Path(evaluation) / task_csv("replicate_retrieval")
        if not (Path(evaluation) / SUMMARY).is_file() or not path.is_file():
            raise ProfileError(f"{evaluation}: not a `profile evaluate` output folder (no {SUMMARY} / {path.name})")
        results = pd.read_csv(path, dtype={s.pert_col: str})
    else:
        results = evaluate_profiles(df, s, str(profiles)).tasks["replicate_retrieval"].table
    yield 2, 3, "projecting"
    coords, explained = project(feature_matrix(norm.table, norm.features), method, s.seed)
    meta = norm.table[[c for c in norm.table.columns if c not in set(norm.features)]].reset_index(drop=True)
    meta[NEGCON_FLAG] = meta[NEGCON_FLAG].astype(int)
    yield WellMap(coords, meta, results.reset_index(drop=True), method, explained)
