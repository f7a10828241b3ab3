"""Every ``jump label`` setting in one light file: the CPJUMP1 pipeline's segmentation settings
(:class:`CellProfilerParams`, recorded in the store manifest) and how a run goes (:class:`LabelSettings`).

Strict models: an unknown key or bad value is a one-line :class:`LabelSettingsError` naming the key. The CLI's
option defaults and ``--param key=value`` overrides read these models; no numpy or OpenCV is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ConfigDict, ValidationInfo, field_validator
from pydantic import Field as PField

from dinocell_core.config import StrictSettings
from dinocell_core.errors import DinocellError

METHODS = ("cellprofiler", "import")  # CPJUMP1's CellProfiler segmentation | masks made elsewhere (--from DIR)


class LabelSettingsError(DinocellError, ValueError):
    """A ``jump label`` setting is unknown or invalid; the message names the key."""


class CellProfilerParams(StrictSettings):
    """The CPJUMP1 pipeline's segmentation settings (module numbers of the analysis pipeline in comments)."""

    model_config = ConfigDict(frozen=True)
    error = LabelSettingsError

    illumination: bool = True            # 3: CorrectIlluminationApply Divide with the plate's Illum<Ch>.npy
    bg_block_size: int = 30              # 16: CorrectIlluminationCalculate Background, block size
    bg_smoothing: float = 50.0           # 16: Gaussian filter size (sigma = size / 2.35)
    nuclei_smoothing_scale: float = 3.0  # 18: threshold smoothing scale (sigma = scale / 0.6744 / 2)
    nuclei_correction: float = 1.25      # 18: threshold correction factor
    nuclei_bounds: tuple[float, float] = (0.014, 1.0)
    min_diameter: float = 10.0           # 18: typical diameter (px); objects outside the area range discarded
    max_diameter: float = 75.0
    maxima_distance: float = 8.0         # 18: minimum allowed distance between local maxima
    cells_smoothing_scale: float = 0.0   # 19: no smoothing
    cells_correction: float = 1.0
    cells_bounds: tuple[float, float] = (0.005, 0.014)
    max_saturated: float = 0.05          # a field with more saturated DNA or RNA pixels than this is refused

    @field_validator("nuclei_bounds", "cells_bounds", mode="before")
    @classmethod
    def _pair_text(cls, v: Any, info: ValidationInfo) -> Any:
        """``low,high`` (or ``(low, high)``, ``[low, high]``) as the command line writes it."""
        if isinstance(v, str):
            try:
                return tuple(float(x) for x in v.strip("()[] ").split(","))
            except ValueError:
                raise ValueError(f"{info.field_name}: need two values low,high, got {v!r}") from None
        return v

    @field_validator("nuclei_bounds", "cells_bounds")
    @classmethod
    def _pair_order(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"{info.field_name}: need two values low,high with low ≤ high, got {v}")
        return v

    def as_dict(self) -> dict[str, object]:
        return self.model_dump()


class LabelSettings(StrictSettings):
    """How ``jump label`` runs (``labels.run.label_tree``); the pipeline's own settings are ``params``.
    ``workers`` is not here: it is the machine's, not the labels' (the CLI default is one per CPU core)."""

    error = LabelSettingsError

    method: str = METHODS[0]
    params: CellProfilerParams = PField(default_factory=CellProfilerParams)
    qc_fields: int = PField(12, ge=0)  # random labelled fields on the contact sheet (0: none)
    seed: int = 0  # which fields the contact sheet shows

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown labelling method {v!r}; use one of {', '.join(METHODS)}")
        return v


def parse_params(items: Sequence[str]) -> CellProfilerParams:
    """``key=value`` overrides of :class:`CellProfilerParams` (``--param``); an unknown key or bad value is a
    :class:`LabelSettingsError` naming itself."""
    data: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LabelSettingsError(f"--param {item!r}: use key=value with key one of "
                                     f"{', '.join(CellProfilerParams.model_fields)}")
        data[key.strip()] = value.strip()
    try:
        return CellProfilerParams(**data)
    except LabelSettingsError as exc:
        raise LabelSettingsError(f"--param: {exc}") from None
