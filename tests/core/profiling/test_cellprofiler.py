"""``profile embed --backbone cellprofiler``: a labels store's cells measured with CellProfiler's features, median per
well, with the ViT tables' metadata, then scored beside the hand-crafted baseline by ``profile compare``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dinocell_core.jump.index import load_index
from dinocell_core.labels.measure import field_measurements
from dinocell_core.labels.store import GROUND_TRUTH_DIR, LabelStore
from dinocell_core.profiling.cellprofiler import cellprofiler_profiles, profile_features
from dinocell_core.profiling.settings import EmbedSettings
from dinocell_core.profiling.table import read_profiles
from dinocell_core.synthetic.fixture import make_jump_fixture

pytest.importorskip("copairs")
pytest.importorskip("cp_measure")


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> tuple[Path, Path]:
    """2 plates × 4 wells × 1 site, 80 px, and its true masks (a labels store)."""
    info = make_jump_fixture(tmp_path_factory.mktemp("cp_profiles"), plates=2, wells=4, sites=1, size=80, seed=1)
    return info.root, info.source_root / GROUND_TRUTH_DIR


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dinocell_core.cli", "profile", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_cellprofiler_profiles_beside_the_baseline(fixture, tmp_path) -> None:
    root, labels = fixture
    cp = tmp_path / "cellprofiler.parquet"
    args = ("embed", str(root), "--backbone", "cellprofiler", "--labels", str(labels), "--features", "minimal",
            "-o", str(cp), "--quiet")
    run = cli(*args)
    assert run.returncode == 0, run.stderr
    base = tmp_path / "baseline.parquet"
    assert cli("embed", str(root), "-o", str(base), "--tile", "64", "--quiet").returncode == 0
    ours, theirs = read_profiles(cp), read_profiles(base)
    meta = [c for c in theirs.columns if c.startswith("Metadata_") and c != "Metadata_Tile_Count"]
    assert set(meta) <= set(ours.columns) and "Metadata_Cell_Count" in ours
    key = ["Metadata_Plate", "Metadata_Well"]
    assert ours[key].values.tolist() == theirs[key].values.tolist()
    feats = profile_features([c for c in ours.columns if not c.startswith("Metadata_")])
    assert "Cells_Intensity_MeanIntensity_Mito" in feats and "Nuclei_AreaShape_Area" in feats
    assert not any("_Location_" in c for c in feats) and np.isfinite(ours[feats].to_numpy()).all()
    info = json.loads(Path(f"{cp}.json").read_text())
    assert info["embedder"] == {"kind": "cellprofiler", "features": "minimal",
                                "library": "dinocell_core.measure.minimal"}

    parts = sorted(Path(f"{cp}.parts").glob("well_*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    again = cli(*args)
    assert again.returncode == 0 and [p.stat().st_mtime_ns for p in parts] == stamps  # resumed: nothing remeasured

    cmp = cli("compare", str(cp), str(base), "null_size=200", "-o", str(tmp_path / "cmp"), "--labels",
              "cellprofiler", "baseline", "--quiet")
    assert cmp.returncode == 0, cmp.stderr
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert set(table.iloc[:, 0]) >= {"cellprofiler", "baseline"}
    assert "cellprofiler" in cmp.stdout


def test_full_well_profile_is_the_median_of_cp_measure_cells(fixture, tmp_path) -> None:
    """``full`` (cp-measure) through the same path, on one field (one well)."""
    root, labels = fixture
    fields = sorted(load_index(str(root)), key=lambda f: (f.plate, f.well))[:1]
    s = EmbedSettings(backbone="cellprofiler", labels=str(labels), features="full")
    wells = cellprofiler_profiles(str(root), fields, tmp_path / "cp.parquet", s, progress=False, report=lambda m: None)
    assert "Cells_Texture_AngularSecondMoment_Mito_3_00_256" in wells and "Nuclei_Correlation_Pearson_Mito_DNA" in wells
    store = LabelStore.open(labels)
    cells = pd.concat([field_measurements(store, row, str(root), f, "full") for f, row in store.match(fields)])
    assert wells["Metadata_Cell_Count"].iloc[0] == len(cells)
    for col in ("Cells_AreaShape_Zernike_2_0", "Nuclei_Intensity_MeanIntensity_DNA", "Cells_Granularity_2_RNA",
                "Cells_Texture_Contrast_ER_3_01_256", "Cells_RadialDistribution_FracAtD_AGP_2of4"):
        assert wells[col].iloc[0] == pytest.approx(cells[col].median(), rel=1e-12)
    info = json.loads(Path(f"{tmp_path / 'cp.parquet'}.json").read_text())
    assert info["embedder"]["library"].startswith("cp-measure ") and info["n_features"] > 1500


def test_cellprofiler_needs_a_labels_store(fixture, tmp_path) -> None:
    root, _ = fixture
    run = cli("embed", str(root), "--backbone", "cellprofiler", "-o", str(tmp_path / "x.parquet"), "--quiet")
    assert run.returncode != 0 and "--labels" in run.stderr and "Traceback" not in run.stderr
