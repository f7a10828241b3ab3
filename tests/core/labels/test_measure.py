"""``jump label --measure``: a labels store's fields measured into Parquet parts whose every column equals cp-measure's
value on the same masks (cp-measure called directly here), kept on a rerun and measured again after a correction."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dinocell_core.jump.index import load_index
from dinocell_core.labels.measure import measure_store, part_path
from dinocell_core.labels.store import GROUND_TRUTH_DIR, LabelStore
from dinocell_core.synthetic.fixture import make_jump_fixture

CHANNELS = ("Mito", "AGP", "RNA", "ER", "DNA")  # ch1..ch5, the fluorescent channels measured


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-plate × 2-well × 1-site 96-px fixture and a copy of its true masks as a labels store."""
    tmp = tmp_path_factory.mktemp("measure_store")
    info = make_jump_fixture(tmp / "data", plates=1, wells=2, sites=1, size=96, seed=5)
    store = tmp / "labels"
    shutil.copytree(info.source_root / GROUND_TRUTH_DIR, store)
    return info.source_root, store


def cp_measure_columns(cells: np.ndarray, images: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """cp-measure's own values for every object of ``cells``, under the CellProfiler names cp_measure.md lists."""
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    core, corr = get_core_measurements(legacy=True), get_correlation_measurements()
    scaled = {ch: img.astype(np.float64) / 65535 for ch, img in images.items()}
    out: dict[str, np.ndarray] = {}
    for group in ("sizeshape", "zernike", "feret"):
        out |= {f"{prefix}_AreaShape_{k}": v for k, v in core[group](cells, scaled["DNA"]).items()}
    for ch, img in scaled.items():
        out |= {f"{prefix}_{k}_{ch}": v for k, v in core["intensity"](cells, img).items()}
        out |= {f"{prefix}_{k}_{ch}": v for k, v in core["granularity"](cells, img).items()}
        for k, v in core["texture"](cells, img).items():
            feature, scale = k.split("_", 1)
            out[f"{prefix}_Texture_{feature}_{ch}_{scale}"] = v
        for group in ("radial_distribution", "radial_zernikes"):
            for k, v in core[group](cells, img).items():
                family, feature, rest = k.split("_", 2)
                out[f"{prefix}_{family}_{feature}_{ch}_{rest}"] = v
    for a, b in itertools.combinations(scaled, 2):
        for group in ("pearson", "manders_fold", "rwc", "costes"):
            kw = {"scale_max": 65535} if group == "costes" else {}
            for k, v in corr[group](scaled[a], scaled[b], cells, **kw).items():
                name = (f"{prefix}_{k[:-2]}_{a}_{b}" if k.endswith("_1") else
                        f"{prefix}_{k[:-2]}_{b}_{a}" if k.endswith("_2") else f"{prefix}_{k}_{a}_{b}")
                out[name] = v
    return out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_written_columns_equal_cp_measure_on_the_fixture_masks(tree) -> None:
    pytest.importorskip("cp_measure")
    root, store_dir = tree
    fields = load_index(str(root))
    written, kept, failed = measure_store(store_dir, str(root), fields[:1], "full")
    assert (written, kept, failed) == (1, 0, [])
    store = LabelStore.open(store_dir)
    row = store.best((fields[0].plate_folder, fields[0].well, fields[0].site))
    table = pd.read_parquet(part_path(store_dir, "full", row))
    field = fields[0]
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_Site", "ObjectNumber"} <= set(table.columns)
    assert table["Metadata_Well"].eq(field.well).all() and table["Metadata_Plate"].eq(field.plate).all()
    from dinocell_core.io.tiffio import read_tiff

    images = {ch: read_tiff(field.path(str(root), i + 1)) for i, ch in enumerate(CHANNELS)}
    nuclei, cells = store.read_pair(row)
    assert len(np.unique(cells)) - 1 == len(table) >= 3
    np.testing.assert_array_equal(table["ObjectNumber"], np.unique(cells)[1:])
    theirs = cp_measure_columns(cells, images, "Cells")
    assert len(theirs) == 110 + 5 * 161 + 10 * 8  # shape; per channel; per channel pair
    ours = {c for c in table.columns if c.startswith("Cells_")} - {"Cells_Parent_Nuclei", "Cells_Children_Nuclei_Count"}
    assert ours == set(theirs) | {"Cells_Location_Center_X", "Cells_Location_Center_Y"}
    assert "Cells_Texture_AngularSecondMoment_Mito_3_00_256" in ours and "Cells_Intensity_MeanIntensity_Mito" in ours
    for name, values in theirs.items():
        np.testing.assert_allclose(table[name], values, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=name)
    # each cell's Nuclei_* columns are its own nucleus's cp-measure values
    nuc = cp_measure_columns(nuclei, images, "Nuclei")
    ids = np.unique(nuclei)[1:]
    at = np.searchsorted(ids, table["Cells_Parent_Nuclei"].to_numpy())
    has = table["Cells_Parent_Nuclei"].to_numpy() > 0
    for name in ("Nuclei_AreaShape_Area", "Nuclei_Texture_Contrast_DNA_3_00_256", "Nuclei_Granularity_2_RNA",
                 "Nuclei_Correlation_Pearson_Mito_DNA", "Nuclei_RadialDistribution_MeanFrac_ER_2of4"):
        np.testing.assert_allclose(table[name].to_numpy()[has], np.asarray(nuc[name])[at[has]], rtol=1e-12,
                                   err_msg=name)


def test_rerun_keeps_parts_and_a_changed_mask_is_measured_again(tree, tmp_path) -> None:
    root, source_store = tree
    store_dir = tmp_path / "labels"
    shutil.copytree(source_store, store_dir, ignore=shutil.ignore_patterns("measurements"))
    fields = load_index(str(root))
    assert measure_store(store_dir, str(root), fields, "minimal") == (2, 0, [])
    assert measure_store(store_dir, str(root), fields, "minimal") == (0, 2, [])
    row = LabelStore.open(store_dir).rows[0]
    mask = store_dir / row.cells
    st = mask.stat()
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as a saved correction rewrites the file
    assert measure_store(store_dir, str(root), fields, "minimal") == (1, 1, [])
    table = pd.read_parquet(part_path(store_dir, "minimal", row))
    assert "Cells_AreaShape_Area" in table and "Cells_Intensity_MeanIntensity_DNA" in table
    assert "Cells_Texture_Contrast_DNA_3_00_256" not in table


def test_a_field_without_an_image_is_reported_not_fatal(tree, tmp_path) -> None:
    root, source_store = tree
    store_dir = tmp_path / "labels"
    shutil.copytree(source_store, store_dir, ignore=shutil.ignore_patterns("measurements"))
    fields = load_index(str(root))
    data = tmp_path / "data"
    shutil.copytree(root, data)
    moved = fields[0].path(str(data), 2)
    os.remove(moved)
    written, kept, failed = measure_store(store_dir, str(data), fields, "minimal")
    assert (written, kept) == (1, 0) and len(failed) == 1 and fields[0].key in failed[0]
