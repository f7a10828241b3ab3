"""The ``full`` feature set: CellProfiler's names for cp-measure's output, the minimal 17 among them with the same
values, a fixed schema for fields without objects, and a clear error naming the extra when cp-measure is absent."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from dinocell_core.measure.cells import check_features, measure_cells, table_columns
from dinocell_core.measure.cpmeasure import MeasureError, channel_name, measure_full, pair_name
from dinocell_core.synthetic.fixture import make_field

pytest.importorskip("cp_measure")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def test_names_follow_cellprofiler() -> None:
    assert channel_name("Cells", "texture", "AngularSecondMoment_3_00_256", "Mito") == \
        "Cells_Texture_AngularSecondMoment_Mito_3_00_256"
    assert channel_name("Nuclei", "radial_distribution", "RadialDistribution_FracAtD_1of4", "DNA") == \
        "Nuclei_RadialDistribution_FracAtD_DNA_1of4"
    assert channel_name("Cells", "granularity", "Granularity_3", "ER") == "Cells_Granularity_3_ER"
    assert channel_name("Cells", "intensity", "Intensity_MeanIntensity", "Mito") == "Cells_Intensity_MeanIntensity_Mito"
    assert pair_name("Cells", "Correlation_Pearson", "DNA", "ER") == "Cells_Correlation_Pearson_DNA_ER"
    assert pair_name("Cells", "Correlation_Manders_2", "DNA", "ER") == "Cells_Correlation_Manders_ER_DNA"


def test_minimal_columns_are_among_full_with_the_same_values() -> None:
    ch, nuclei, cells = make_field(96, seed=3)
    images = {"DNA": ch[4], "Mito": ch[0]}
    full = measure_cells(cells, nuclei, images, "full")
    minimal = measure_cells(cells, nuclei, images, "minimal")
    assert list(full.columns) == table_columns(("Cells", "Nuclei"), list(images), "full")
    assert set(minimal.columns) < set(full.columns) and len(full) == len(minimal) >= 3
    for col in minimal.columns:
        tol = 1e-4 if col.endswith("Orientation") else 1e-9  # near-zero angles: 3.7e-5 relative (cp_measure.md)
        np.testing.assert_allclose(full[col], minimal[col], rtol=tol, atol=1e-9, equal_nan=True, err_msg=col)


def test_no_objects_give_the_columns_and_no_rows() -> None:
    empty = measure_full(np.zeros((48, 48), np.int32), {"DNA": np.ones((48, 48), np.uint16)}, "Nuclei")
    assert len(empty) == 0 and list(empty.columns) == table_columns(("Nuclei",), ["DNA"], "full")


def test_bad_labels_and_images_name_the_problem() -> None:
    with pytest.raises(MeasureError, match="2-D integer"):
        measure_full(np.zeros((4, 4), np.float32))
    lab = np.zeros((32, 32), np.int32)
    lab[4:12, 4:12] = 1
    with pytest.raises(MeasureError, match="channel DNA: image shape"):
        measure_full(lab, {"DNA": np.zeros((16, 16), np.uint16)})
    with pytest.raises(MeasureError, match="features must be one of minimal, full"):
        check_features("everything")


def test_full_without_cp_measure_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cp_measure.bulk", None)  # import fails as when the package is absent
    with pytest.raises(MeasureError, match=r"pip install 'dinocell\[measure\]'"):
        check_features("full")
    lab = np.zeros((32, 32), np.int32)
    lab[4:12, 4:12] = 1
    with pytest.raises(MeasureError, match="cp-measure"):
        measure_cells(lab, None, {"DNA": np.ones((32, 32), np.uint16)}, "full")
    assert isinstance(measure_cells(lab, None, None, "minimal"), pd.DataFrame)  # minimal needs no extra
