"""Per-cell measurements: exact values on hand-made objects, CellProfiler names, and pycytominer reading them."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops_table

from dinocell_core.measure.cells import measure_cells, parent_of
from dinocell_core.measure.minimal import measure_objects
from dinocell_core.synthetic.fixture import make_field


def two_cells() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    cells = np.zeros((40, 60), np.int32)
    cells[5:25, 5:25] = 3  # 400 px
    cells[10:30, 35:55] = 8  # 400 px, with no nucleus
    nuclei = np.zeros_like(cells)
    nuclei[10:18, 10:18] = 1  # 64 px inside cell 3
    nuclei[20:24, 20:24] = 2  # a small second nucleus also in cell 3
    dna = np.zeros(cells.shape, np.uint16)
    dna[nuclei > 0] = 65535
    mito = np.full(cells.shape, 0.25, np.float32)
    return cells, nuclei, {"DNA": dna, "Mito": mito}


def test_values_names_and_parent_nucleus() -> None:
    cells, nuclei, images = two_cells()
    t = measure_cells(cells, nuclei, images)
    assert list(t["ObjectNumber"]) == [3, 8]
    assert list(t["Cells_AreaShape_Area"]) == [400, 400]
    assert list(t["Cells_Parent_Nuclei"]) == [1, 0] and list(t["Cells_Children_Nuclei_Count"]) == [2, 0]
    # uint16 intensities rescaled by 65535 as CellProfiler does; floats as they are
    assert t["Cells_Intensity_IntegratedIntensity_DNA"].tolist() == [80.0, 0.0]
    assert t["Cells_Intensity_MeanIntensity_DNA"][0] == pytest.approx(80 / 400)
    assert t["Cells_Intensity_MaxIntensity_DNA"].tolist() == [1.0, 0.0]
    assert t["Cells_Intensity_MeanIntensity_Mito"].tolist() == pytest.approx([0.25, 0.25])
    assert t["Nuclei_AreaShape_Area"][0] == 64 and np.isnan(t["Nuclei_AreaShape_Area"][1])
    assert t["Nuclei_Intensity_MeanIntensity_DNA"][0] == 1.0
    assert t["Cells_Location_Center_X"][0] == pytest.approx(14.5)
    assert t["Cells_AreaShape_FormFactor"][0] == pytest.approx(4 * np.pi * 400 / t["Cells_AreaShape_Perimeter"][0] ** 2)
    nuc_only = measure_cells(None, nuclei, images)
    assert list(nuc_only["ObjectNumber"]) == [1, 2] and "Nuclei_AreaShape_Area" in nuc_only
    with pytest.raises(ValueError, match="differs"):
        measure_objects(cells, {"DNA": images["DNA"][:10]})


def test_vectorised_features_equal_regionprops() -> None:
    ch, nuc, cells = make_field(256, seed=2)
    t = measure_objects(cells, {"DNA": ch[4]})
    ref = regionprops_table(cells, ch[4], properties=("label", "area", "eccentricity", "axis_major_length",
                                                      "axis_minor_length", "orientation", "centroid",
                                                      "intensity_mean", "intensity_min", "intensity_max"))
    np.testing.assert_array_equal(t["ObjectNumber"], ref["label"])
    for ours, theirs, scale in (("AreaShape_Area", "area", 1), ("AreaShape_Eccentricity", "eccentricity", 1),
                                ("AreaShape_MajorAxisLength", "axis_major_length", 1),
                                ("AreaShape_MinorAxisLength", "axis_minor_length", 1),
                                ("Location_Center_Y", "centroid-0", 1),
                                ("Intensity_MeanIntensity_DNA", "intensity_mean", 65535),
                                ("Intensity_MinIntensity_DNA", "intensity_min", 65535)):
        np.testing.assert_allclose(t[f"Cells_{ours}"], np.asarray(ref[theirs]) / scale, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(t["Cells_AreaShape_Orientation"], np.degrees(ref["orientation"]), atol=1e-9)


def test_parent_of_takes_the_most_overlapping_child() -> None:
    parents = np.zeros((10, 10), np.int32)
    parents[:, :6] = 5
    children = np.zeros_like(parents)
    children[0:2, 0:2] = 7  # 4 px
    children[4:9, 1:5] = 9  # 20 px: the main nucleus
    best, n = parent_of(children, parents)
    assert best.tolist() == [9] and n.tolist() == [2]


def test_pycytominer_aggregates_the_table() -> None:
    """pycytominer's own aggregate infers features from the Cells_/Nuclei_ prefixes and groups by Metadata_."""
    aggregate = pytest.importorskip("pycytominer").aggregate
    cells, nuclei, images = two_cells()
    t = measure_cells(cells, nuclei, images)
    t.insert(0, "Metadata_Well", ["A01", "A01"])
    t.insert(0, "Metadata_Plate", ["P1", "P1"])
    prof = aggregate(t, strata=["Metadata_Plate", "Metadata_Well"], features="infer", operation="median")
    assert len(prof) == 1
    assert prof["Cells_AreaShape_Area"].iloc[0] == 400
    assert prof["Cells_Intensity_MeanIntensity_Mito"].iloc[0] == pytest.approx(0.25)
