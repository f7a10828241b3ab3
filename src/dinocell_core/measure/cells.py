"""The per-cell table of one field, in either feature set: ``minimal`` (the 17 hand-written features,
:mod:`~dinocell_core.measure.minimal`) or ``full`` (CellProfiler's measurements by cp-measure,
:mod:`~dinocell_core.measure.cpmeasure`); cells and their nuclei merged into one row per cell, the single-cell layout
pycytominer aggregates. Every caller (``segment-plate``, ``jump label --measure``, ``profile embed --backbone
cellprofiler``, napari's export) measures through here, so their columns agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from dinocell_core.measure.cpmeasure import MeasureError, feature_columns, measure_full, require_cp_measure
from dinocell_core.measure.minimal import INTENSITY_FEATURES, SHAPE_ORDER, measure_objects
from dinocell_core.measure.names import FEATURE_SETS
NUCLEI, CELLS = "Nuclei", "Cells"
RELATION_COLUMNS = ("Cells_Parent_Nuclei", "Cells_Children_Nuclei_Count")


def check_features(features: str) -> str:
    """``features`` if it is a feature set whose packages are installed; else a MeasureError saying what to do."""
    if features not in FEATURE_SETS:
        raise MeasureError(f"features must be one of {', '.join(FEATURE_SETS)}, got {features!r}")
    if features == "full":
        require_cp_measure()
    return features


def measure_one(labels: np.ndarray, images: Mapping[str, np.ndarray] | None, prefix: str,
                features: str = "minimal") -> pd.DataFrame:
    """One row per object of ``labels`` (``ObjectNumber`` + ``{prefix}_*`` features of ``features``)."""
    if check_features(features) == "full":
        return measure_full(labels, images, prefix)
    return measure_objects(labels, images, prefix)


def object_columns(prefix: str, channels: Sequence[str], features: str = "minimal") -> list[str]:
    """The feature columns of one object kind, in the order :func:`measure_one` writes them."""
    if check_features(features) == "full":
        return list(feature_columns(prefix, tuple(str(c) for c in channels)))
    return ([f"{prefix}_AreaShape_{n}" for n in SHAPE_ORDER] + [f"{prefix}_Location_Center_X",
                                                                 f"{prefix}_Location_Center_Y"]
            + [f"{prefix}_Intensity_{feat}_{ch}" for ch in channels for feat in INTENSITY_FEATURES])


def table_columns(objects: Sequence[str], channels: Sequence[str], features: str = "minimal") -> list[str]:
    """``ObjectNumber`` and the feature columns of :func:`measure_cells` for these objects (fixed, so every field's
    part of a plate shares one Parquet schema)."""
    if CELLS not in objects:
        return ["ObjectNumber", *object_columns(NUCLEI, channels, features)]
    cols = ["ObjectNumber", *object_columns(CELLS, channels, features)]
    if NUCLEI in objects:
        cols += [*RELATION_COLUMNS, *object_columns(NUCLEI, channels, features)]
    return cols


def parent_of(children: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every parent object (ids ascending): the child (e.g. nucleus) it contains — the one with the most
    pixels inside it, 0 if none — and how many children overlap it."""
    p_ids = np.unique(parents)
    p_ids = p_ids[p_ids != 0]
    best = np.zeros(p_ids.size, np.int64)
    n_children = np.zeros(p_ids.size, np.int64)
    both = (parents > 0) & (children > 0)
    if not p_ids.size or not both.any():
        return best, n_children
    pairs = np.stack([np.searchsorted(p_ids, parents[both]), children[both].astype(np.int64)], 1)
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    n_children[:] = np.bincount(uniq[:, 0], minlength=p_ids.size)
    order = np.lexsort((-counts, uniq[:, 0]))  # by parent, most-overlapping child first
    first = np.unique(uniq[order, 0], return_index=True)[1]
    best[uniq[order[first], 0]] = uniq[order[first], 1]
    return best, n_children


def measure_cells(cells: np.ndarray | None, nuclei: np.ndarray | None,
                  images: Mapping[str, np.ndarray] | None = None, features: str = "minimal") -> pd.DataFrame:
    """The per-cell table of one field: ``Cells_*`` features, ``Cells_Parent_Nuclei`` (the nucleus each cell
    contains, 0 if none), ``Cells_Children_Nuclei_Count`` and that nucleus's ``Nuclei_*`` features in the same row
    (NaN when a cell has none) — the merged single-cell layout pycytominer aggregates. With nuclei only, one row
    per nucleus. Columns in :func:`table_columns` order."""
    if cells is None and nuclei is None:
        raise ValueError("measure_cells needs cell labels, nucleus labels or both")
    if cells is None:
        return measure_one(nuclei, images, NUCLEI, features)
    table = measure_one(cells, images, CELLS, features)
    if nuclei is None:
        return table
    parent, n_children = parent_of(nuclei, cells)
    table["Cells_Parent_Nuclei"] = parent
    table["Cells_Children_Nuclei_Count"] = n_children
    nuc = measure_one(nuclei, images, NUCLEI, features).rename(columns={"ObjectNumber": "Cells_Parent_Nuclei"})
    return table.merge(nuc, on="Cells_Parent_Nuclei", how="left")
