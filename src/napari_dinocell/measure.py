"""Per-object measurements of a labels image, as a CSV table (what leaves the viewer with the labels).

A minimal local table (skimage ``regionprops_table``). When ``dinocell_core.seg.measure`` lands (the
segmentation issue's per-object measurements, shared with the CLI), this module should call it instead.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import regionprops_table

from dinocell_core.io.fsutil import atomic_path

SHAPE_PROPERTIES = ("label", "area", "centroid", "bbox", "eccentricity", "solidity", "perimeter",
                    "axis_major_length", "axis_minor_length")
INTENSITY_PROPERTIES = ("intensity_mean", "intensity_max", "intensity_min")


def object_table(labels: np.ndarray, intensity: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One row per object: id, area (px), centroid/bbox (row, col), shape descriptors, and intensity stats of
    ``intensity`` (the raw image the labels were computed on) when given."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    props = SHAPE_PROPERTIES + (INTENSITY_PROPERTIES if intensity is not None else ())
    if intensity is not None and intensity.shape != labels.shape:
        raise ValueError(f"intensity image {intensity.shape} and labels {labels.shape} differ in shape")
    return regionprops_table(np.asarray(labels), intensity_image=intensity, properties=props)


def write_table(table: Mapping[str, np.ndarray], path: str | Path, constants: Mapping[str, Any] | None = None) -> int:
    """Write ``table`` (columns of equal length) as CSV atomically, ``constants`` (plate, well, …) as leading
    columns repeated on every row; returns the number of rows."""
    constants = dict(constants or {})
    columns = list(table)
    n = len(table[columns[0]]) if columns else 0
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*constants, *columns])
        for i in range(n):
            writer.writerow([*constants.values(), *(_cell(table[c][i]) for c in columns)])
    return n


def _cell(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return f"{float(value):.6g}"
    if isinstance(value, np.integer):
        return int(value)
    return value
