"""The ``minimal`` feature set: 10 AreaShape, the centre and 5 Intensity features per object with CellProfiler's
column names, hand-written so they need no extra package (they equal cp-measure's to ≤ 1e-13; the ``full`` set is
cp-measure's own, :mod:`dinocell_core.measure.cpmeasure`), and pycytominer reads them as it reads CellProfiler's.

Naming: ``<Object>_AreaShape_<Feature>``, ``<Object>_Intensity_<Feature>_<Channel>``,
``<Object>_Location_Center_X``; one row per object with ``ObjectNumber`` = its label id. Intensities are
measured as CellProfiler does by default: integer images rescaled to [0, 1] by their type's maximum
(uint16 → ÷ 65535), floats as they are. Features that need each object's own mask (perimeter, solidity, extent,
Euler number) come from scikit-image ``regionprops``, which CellProfiler uses too; area, centre, the second-moment
features and the intensity statistics are computed in vectorised passes (identical to ``regionprops``'s values).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

PER_OBJECT_PROPS = {  # CellProfiler AreaShape name ← scikit-image regionprops property
    "Perimeter": "perimeter", "Solidity": "solidity", "Extent": "extent", "EulerNumber": "euler_number",
}
#: (the centre is ``<Object>_Location_Center_X/Y`` only: CellProfiler's AreaShape_Center_X/Y repeats it)
SHAPE_ORDER = ("Area", "Perimeter", "FormFactor", "Eccentricity", "Solidity", "Extent", "MajorAxisLength",
               "MinorAxisLength", "Orientation", "EulerNumber")
INTENSITY_FEATURES = ("IntegratedIntensity", "MeanIntensity", "StdIntensity", "MinIntensity", "MaxIntensity")


def intensity_scale(image: np.ndarray) -> float:
    """CellProfiler's default rescaling: integer images by their type's maximum, floats by 1."""
    return float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0


class _Groups:
    """The pixels of every object, sorted by object once, so each statistic is one ``reduceat`` per channel."""

    def __init__(self, labels: np.ndarray) -> None:
        flat = labels.ravel()
        self.shape = labels.shape
        pix = np.flatnonzero(flat)
        lab = flat[pix]
        order = np.argsort(lab, kind="stable")
        self.pixels = pix[order]
        self.ids, self.starts, counts = np.unique(lab[order], return_index=True, return_counts=True)
        self.counts = counts.astype(np.float64)

    def reduce(self, values: np.ndarray, op: np.ufunc = np.add) -> np.ndarray:
        return op.reduceat(values, self.starts) if self.ids.size else np.zeros(0)

    def intensity(self, image: np.ndarray, name: str) -> dict[str, np.ndarray]:
        """Integrated / mean / std / min / max intensity per object, rescaled as CellProfiler."""
        img = np.asarray(image)
        if img.shape != self.shape:
            raise ValueError(f"channel {name}: image shape {img.shape} differs from the labels' {self.shape}")
        v = img.ravel()[self.pixels].astype(np.float64) / intensity_scale(img)
        n = np.maximum(self.counts, 1)
        total = self.reduce(v)
        mean = total / n
        var = np.maximum(self.reduce(v * v) / n - mean ** 2, 0.0)
        return {"IntegratedIntensity": total, "MeanIntensity": mean, "StdIntensity": np.sqrt(var),
                "MinIntensity": self.reduce(v, np.minimum), "MaxIntensity": self.reduce(v, np.maximum)}

    def moments(self) -> dict[str, np.ndarray]:
        """Area, centre and second-moment features, as scikit-image's inertia tensor defines them."""
        width = self.shape[1]
        y = (self.pixels // width).astype(np.float64)
        x = (self.pixels % width).astype(np.float64)
        n = np.maximum(self.counts, 1)
        cy, cx = self.reduce(y) / n, self.reduce(x) / n
        rep = np.repeat(np.arange(self.ids.size), self.counts.astype(np.int64))
        dy, dx = y - cy[rep], x - cx[rep]
        a = self.reduce(dx * dx) / n  # inertia tensor [[a, b], [b, c]]
        b = -self.reduce(dx * dy) / n
        c = self.reduce(dy * dy) / n
        half = np.sqrt(((a - c) / 2) ** 2 + b ** 2)
        l1, l2 = (a + c) / 2 + half, np.maximum((a + c) / 2 - half, 0.0)
        ecc = np.sqrt(1.0 - np.divide(l2, l1, out=np.ones_like(l1), where=l1 > 0))
        orient = np.where(a - c == 0, np.where(b < 0, np.pi / 4, -np.pi / 4), 0.5 * np.arctan2(-2 * b, c - a))
        return {"Area": self.counts.copy(), "Center_X": cx, "Center_Y": cy, "Eccentricity": ecc,
                "MajorAxisLength": 4 * np.sqrt(l1), "MinorAxisLength": 4 * np.sqrt(l2),
                "Orientation": np.degrees(orient)}


def measure_objects(labels: np.ndarray, images: Mapping[str, np.ndarray] | None = None,
                    prefix: str = "Cells") -> pd.DataFrame:
    """One row per object of ``labels``: ObjectNumber, ``{prefix}_AreaShape_*``, ``{prefix}_Location_Center_X/Y``
    and, for every ``images`` entry (channel name → 2-D array of the labels' shape),
    ``{prefix}_Intensity_{IntegratedIntensity,MeanIntensity,StdIntensity,MinIntensity,MaxIntensity}_{channel}``.

    The napari Segment widget's measurement export can call this directly (labels layer + its channel images).
    """
    lab = np.asarray(labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer image, got {lab.dtype} {lab.shape}")
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be non-negative")
    groups = _Groups(lab)
    ids = groups.ids
    shape = groups.moments()
    if ids.size:
        props = regionprops_table(lab, properties=("label", *PER_OBJECT_PROPS.values()))
        order = np.searchsorted(props["label"], ids)
        for cp_name, sk_name in PER_OBJECT_PROPS.items():
            shape[cp_name] = np.asarray(props[sk_name], float)[order]
    else:
        shape.update({k: np.zeros(0) for k in PER_OBJECT_PROPS})
    area, perim = shape["Area"], shape["Perimeter"]
    shape["FormFactor"] = np.divide(4 * np.pi * area, perim ** 2, out=np.ones_like(area), where=perim > 0)
    cols: dict[str, np.ndarray] = {"ObjectNumber": ids.astype(np.int64)}
    for name in SHAPE_ORDER:
        cols[f"{prefix}_AreaShape_{name}"] = shape[name]
    cols[f"{prefix}_Location_Center_X"] = shape["Center_X"]
    cols[f"{prefix}_Location_Center_Y"] = shape["Center_Y"]
    for channel, image in (images or {}).items():
        for feat, values in groups.intensity(image, str(channel)).items():
            cols[f"{prefix}_Intensity_{feat}_{channel}"] = values
    return pd.DataFrame(cols)

