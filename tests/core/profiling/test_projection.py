"""The Profiles widget's 2-D map: PCA always, UMAP with the optional ``umap`` extra (a clear error without it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dinocell_core.profiling.projection as projection
from dinocell_core.profiling.projection import WellMap, iter_well_map, project
from dinocell_core.profiling.table import ProfileError


def _two_clusters(n: int = 20, d: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * n, d))
    x[n:] += 6.0
    return x, np.repeat([0, 1], n)


def _nn_same_cluster(coords: np.ndarray, labels: np.ndarray) -> float:
    d = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(axis=1)] == labels).mean())


def test_pca_separates_clusters():
    x, y = _two_clusters()
    coords, explained = project(x, "PCA")
    assert coords.shape == (40, 2) and len(explained) == 2 and explained[0] > explained[1]
    assert _nn_same_cluster(coords, y) == 1.0


def test_umap_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(projection, "umap_available", lambda: False)
    with pytest.raises(ProfileError, match=r"umap-learn.*\[umap\].*PCA"):
        project(np.zeros((10, 3)), "UMAP")
    with pytest.raises(ProfileError, match="unknown projection"):
        project(np.zeros((10, 3)), "tSNE")


def test_umap_projection(tmp_path: Path):
    pytest.importorskip("umap")
    x, y = _two_clusters()
    coords, explained = project(x, "UMAP", seed=0)
    assert coords.shape == (40, 2) and coords.dtype == np.float32 and explained == ()
    assert np.isfinite(coords).all() and _nn_same_cluster(coords, y) == 1.0
    with pytest.raises(ProfileError, match="at least 4 wells"):
        project(x[:3], "UMAP")
    pytest.importorskip("copairs")
    from dinocell_core.profiling.evaluate import EvalSettings
    from dinocell_core.synthetic.profiles import planted_profiles

    table = tmp_path / "wells.csv"
    planted_profiles(plates=2, perturbations=6, negcon_per_plate=6, features=16).to_csv(table, index=False)
    *steps, wm = iter_well_map(table, settings=EvalSettings(null_size=200, matching=False), method="UMAP")
    assert isinstance(wm, WellMap) and wm.method == "UMAP" and wm.coords.shape == (24, 2)
    assert [s[2] for s in steps] == ["reading", "evaluating", "projecting"]
