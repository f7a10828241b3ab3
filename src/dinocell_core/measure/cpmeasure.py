"""CellProfiler's full per-object measurements, computed by ``cp-measure`` (the CellProfiler team's library) and named
as CellProfiler names them, so CPJUMP1-style profiles come from the field's own library rather than a re-implementation.

Per object (``Cells`` or ``Nuclei``): every AreaShape feature (``sizeshape``, ``zernike``, ``feret``), and per channel
``intensity``, ``texture`` (Haralick, scale 3, 256 levels), ``granularity`` and ``radial_distribution`` /
``radial_zernikes``; per ordered channel pair the correlation family (Pearson, slope, Manders, RWC, Costes). Images are
on CellProfiler's 0–1 scale (integer images ÷ their type's maximum: uint16 ÷ 65535, as
:func:`~dinocell_core.measure.minimal.intensity_scale`), the intensity quartiles and MAD use CellProfiler's legacy
convention (``legacy=True``), and labels are relabelled 1…N by cp-measure, its rows following the sorted label ids
(= ``ObjectNumber``). cp-measure is an optional extra: without it, :func:`require_cp_measure` says which to install.

Name mapping (cp-measure → CellProfiler, for ``<Obj>``, channel ``C``, pair ``A``/``B``)::

    Area, Zernike_2_0, MaxFeretDiameter            → <Obj>_AreaShape_<name>
    Intensity_MeanIntensity                        → <Obj>_Intensity_MeanIntensity_C
    Location_MaxIntensity_X                        → <Obj>_Location_MaxIntensity_X_C
    Granularity_3                                  → <Obj>_Granularity_3_C
    RadialDistribution_FracAtD_1of4                → <Obj>_RadialDistribution_FracAtD_C_1of4
    Contrast_3_00_256                              → <Obj>_Texture_Contrast_C_3_00_256
    Correlation_Pearson                            → <Obj>_Correlation_Pearson_A_B
    Correlation_Manders_1 / _2                     → <Obj>_Correlation_Manders_A_B / <Obj>_Correlation_Manders_B_A
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from dinocell_core.errors import DinocellError
from dinocell_core.measure.minimal import intensity_scale

EXTRA = "measure"
INSTALL = f"pip install 'dinocell[{EXTRA}]'  (cp-measure>=0.3,<0.4)"
SHAPE_GROUPS = ("sizeshape", "zernike", "feret")
CHANNEL_GROUPS = ("intensity", "texture", "granularity", "radial_distribution", "radial_zernikes")
PAIR_GROUPS = ("pearson", "manders_fold", "rwc", "costes")
COSTES_SCALE = 65535  # the images are uint16 ÷ 65535: Costes' thresholds step on the 16-bit grid


class MeasureError(DinocellError):
    """Full measurements cannot be made (cp-measure missing, bad labels or images); says what to do."""


def require_cp_measure() -> tuple[dict[str, Callable[..., Any]], dict[str, Callable[..., Any]]]:
    """cp-measure's (core, correlation) functions, or a MeasureError naming the extra to install."""
    try:
        from cp_measure.bulk import get_core_measurements, get_correlation_measurements
    except ImportError:
        raise MeasureError(f"--features full needs cp-measure, which is not installed: {INSTALL}") from None
    return get_core_measurements(legacy=True), get_correlation_measurements()


def channel_name(prefix: str, group: str, key: str, channel: str) -> str:
    """CellProfiler's column for cp-measure's per-channel ``key`` (of ``group``) measured on ``channel``."""
    if group == "texture":
        feature, scale = key.split("_", 1)
        return f"{prefix}_Texture_{feature}_{channel}_{scale}"
    if group in ("radial_distribution", "radial_zernikes"):
        family, feature, rest = key.split("_", 2)
        return f"{prefix}_{family}_{feature}_{channel}_{rest}"
    return f"{prefix}_{key}_{channel}"  # Intensity_*, Location_*, Granularity_*


def pair_name(prefix: str, key: str, first: str, second: str) -> str:
    """CellProfiler's column for a correlation ``key``: ``_1`` measures first against second, ``_2`` the reverse."""
    if key.endswith("_1"):
        return f"{prefix}_{key[:-2]}_{first}_{second}"
    if key.endswith("_2"):
        return f"{prefix}_{key[:-2]}_{second}_{first}"
    return f"{prefix}_{key}_{first}_{second}"


def _scaled(image: np.ndarray, shape: tuple[int, ...], channel: str) -> np.ndarray:
    img = np.asarray(image)
    if img.shape != shape:
        raise MeasureError(f"channel {channel}: image shape {img.shape} differs from the labels' {shape}")
    return img.astype(np.float64) / intensity_scale(img)


def _measure(labels: np.ndarray, images: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    import warnings

    with warnings.catch_warnings():  # 0/0 of a flat or tiny object: NaN and a warning each, as in CellProfiler
        warnings.simplefilter("ignore", RuntimeWarning)
        return _measure_groups(labels, images, prefix)


def _measure_groups(labels: np.ndarray, images: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    core, pairs = require_cp_measure()
    scaled = {str(ch): _scaled(img, labels.shape, str(ch)) for ch, img in images.items()}
    any_image = next(iter(scaled.values()), np.zeros(labels.shape))
    cols: dict[str, np.ndarray] = {}
    for group in SHAPE_GROUPS:
        for key, values in core[group](labels, any_image).items():
            cols[f"{prefix}_AreaShape_{key}"] = np.asarray(values, np.float64)
    cols[f"{prefix}_Location_Center_X"] = cols[f"{prefix}_AreaShape_Center_X"]
    cols[f"{prefix}_Location_Center_Y"] = cols[f"{prefix}_AreaShape_Center_Y"]
    for channel, img in scaled.items():
        for group in CHANNEL_GROUPS:
            for key, values in core[group](labels, img).items():
                cols[channel_name(prefix, group, key, channel)] = np.asarray(values, np.float64)
    for first, second in itertools.combinations(scaled, 2):
        for group in PAIR_GROUPS:
            kw = {"scale_max": COSTES_SCALE} if group == "costes" else {}
            for key, values in pairs[group](scaled[first], scaled[second], labels, **kw).items():
                cols[pair_name(prefix, key, first, second)] = np.asarray(values, np.float64)
    return cols


@lru_cache(maxsize=32)
def feature_columns(prefix: str, channels: tuple[str, ...]) -> tuple[str, ...]:
    """The full columns of ``prefix`` objects measured on ``channels``, in the order :func:`measure_full` writes
    them (read off one small probe object, so they follow cp-measure's own output)."""
    yy, xx = np.mgrid[0:48, 0:48]
    probe = ((yy - 24) ** 2 + (xx - 24) ** 2 < 15 ** 2).astype(np.int32)
    ramp = (yy * 48 + xx).astype(np.uint16)
    return tuple(_measure(probe, {ch: ramp for ch in channels}, prefix))


def measure_full(labels: np.ndarray, images: Mapping[str, np.ndarray] | None = None,
                 prefix: str = "Cells") -> pd.DataFrame:
    """One row per object of ``labels`` (ids ascending = ``ObjectNumber``) with every cp-measure feature under its
    CellProfiler name (module docstring); a labels image without objects gives the same columns and no rows."""
    lab = np.asarray(labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise MeasureError(f"labels must be a 2-D integer image, got {lab.dtype} {lab.shape}")
    if lab.size and lab.min() < 0:
        raise MeasureError("labels must be non-negative")
    chans = {str(k): v for k, v in (images or {}).items()}
    ids = np.unique(lab)
    ids = ids[ids != 0].astype(np.int64)
    names = feature_columns(prefix, tuple(chans))
    if not ids.size:
        return pd.DataFrame({"ObjectNumber": ids, **{n: np.zeros(0) for n in names}})
    cols = _measure(lab, chans, prefix)
    return pd.DataFrame({"ObjectNumber": ids, **{n: cols[n] for n in names}})

