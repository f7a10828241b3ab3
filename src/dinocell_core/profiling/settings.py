"""Every profiling setting in one light file: the strict models behind ``profile embed`` (:class:`EmbedSettings`)
and ``profile evaluate|compare`` (:class:`EvalSettings`), and the two pieces the pretraining ``eval:`` section is
built from (:class:`ReadoutSettings`, :class:`ScoreSettings`; ``dinocell_core.ssl.config.EvalSection``).

Each default is written here once: the CLI options take theirs from these models, ``key=value`` overrides reach
every field, and the Profiles widget reads the named ones below. An unknown key or bad value is a one-line
:class:`ProfileError` naming the key. No numpy, pandas or torch is imported here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field as PField
from pydantic import field_validator, model_validator

from dinocell_core.config import PrecisionName, StrictSettings
from dinocell_core.jump.channels import CHANNELS, FLUORESCENT, FMEAN, ChannelMode
from dinocell_core.measure.names import FEATURE_SETS
from dinocell_core.profiling.normalize import NORMALIZATIONS
from dinocell_core.profiling.table import ProfileError

TOKENS = ("cls", "mean_patch", "cls+mean_patch")
UNITS = ("tiles", "cells")
CENTRES = ("nuclei", "cells")  # cell crops: centred on the nucleus or on the cell mask (profiling.cells)
BORDERS = ("pad", "shift", "skip")  # cell crops leaving the field (profiling.cells)
CELL_KEYS = ("units", "labels", "crop", "centre", "border")
AGGREGATIONS = ("mean", "median")
EACH = "each"  # every fluorescent channel embedded on its own, the vectors concatenated
BASELINE = "baseline"  # the hand-crafted statistics (profiling.baseline)
TEACHER = "teacher"  # the pretraining run's own teacher (the ``eval:`` section)
CELLPROFILER = "cellprofiler"  # CellProfiler's per-cell features of a labels store, median per well

#: the read-out of a ViT backbone unless ``channels`` says otherwise (random init, official weights, run dirs,
#: checkpoints, exports, the teacher): each fluorescent channel on its own, CLS vectors concatenated, as Kim et al.
#: read out their ImageNet baselines. On the fixture the same backbones score k-NN 0.89–0.92 this way against
#: 0.50–0.60 on the fluorescent mean (issue 23): the phenotype lives in single stains that the mean dilutes.
VIT_READOUT = EACH
#: the hand-crafted baseline's read-out (its statistics of the mean; ``--channels each`` gives them per stain)
BASELINE_READOUT = FMEAN
#: the copairs permutation null of the CPJUMP1 benchmark (``profile evaluate|compare``)
BENCHMARK_NULL_SIZE = 100_000
#: the null where a score must come back in seconds: the pretraining ``eval:`` section (rank 0 scores while the
#: other ranks wait in a collective) and the Profiles widget. 10,000 permutations resolve p-values to 1e-4, ample
#: for the 0.05 BH threshold on a few held-out plates, at a tenth of the benchmark's time.
QUICK_NULL_SIZE = 10_000
#: the largest null accepted: copairs holds null_size floats per distinct (positives, total) pair, so 10¹² asked for
#: terabytes; ten times the benchmark's null resolves p-values to 1e-6
MAX_NULL_SIZE = 1_000_000


def default_channels(backbone: str) -> str:
    """The read-out ``backbone`` gets when ``channels`` is not given: :data:`BASELINE_READOUT` for the
    hand-crafted baseline, :data:`VIT_READOUT` for every ViT. A ``fluorescent_stack`` backbone (5 input planes,
    recorded in its weights) embeds the stack whatever this says: ``profiling.embed.readout_views``."""
    return BASELINE_READOUT if backbone == BASELINE else VIT_READOUT


def channel_views(channels: str) -> list[tuple[str, tuple[int, ...]]]:
    """(view name, channels averaged into it) of a read-out word: ``fluorescent_mean`` | ``each`` | ``channel:N``
    (a 5-plane backbone's one ``stack`` view is added by ``profiling.embed.readout_views``)."""
    c = channels.strip()
    if c == EACH:
        return [(CHANNELS[ch], (ch,)) for ch in FLUORESCENT]
    try:
        mode = ChannelMode.parse(c)
    except ValueError as exc:
        raise ProfileError(f"channels: {exc} (or each)") from None
    if mode.kind == FMEAN:
        return [("fmean", tuple(FLUORESCENT))]
    if mode.kind == "channel":
        return [(CHANNELS[mode.channel], (mode.channel,))]
    raise ProfileError(f"channels must be fluorescent_mean, each or channel:N, got {channels!r}")


class ReadoutSettings(StrictSettings):
    """How a backbone's units become vectors: shared by ``profile embed`` and the pretraining ``eval:`` section."""

    error = ProfileError

    channels: str | None = None  # fluorescent_mean | each | channel:N; None: the backbone's (default_channels)
    tokens: str = "cls"  # cls | mean_patch | cls+mean_patch
    tile: int = PField(224, ge=8, le=4096)  # px (Kim et al.)
    batch_size: int = PField(64, ge=1, le=4096)  # units per network call

    @model_validator(mode="before")
    @classmethod
    def _default_channels(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("channels") is None:
            backbone = data.get("backbone", cls._default_backbone())
            data = {**data, "channels": default_channels(str(backbone))}
        return data

    @classmethod
    def _default_backbone(cls) -> str:
        """The backbone when the data names none: EmbedSettings' ``backbone`` default, else the teacher."""
        field = cls.model_fields.get("backbone")
        return str(field.default) if field is not None else TEACHER

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: str) -> str:
        if v not in TOKENS:
            raise ValueError(f"tokens must be one of {TOKENS}, got {v!r}")
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: str | None) -> str | None:
        if v is not None:
            channel_views(v)
        return v

    def views(self) -> list[tuple[str, tuple[int, ...]]]:
        """(view name, channels averaged into it)."""
        assert self.channels is not None  # filled in by validation
        return channel_views(self.channels)


class ScoreSettings(StrictSettings):
    """How well profiles are scored: shared by ``profile evaluate|compare`` and the pretraining ``eval:`` section."""

    error = ProfileError

    normalize: str = "negcon_mad"  # one of NORMALIZATIONS (profiling.normalize)
    null_size: int = BENCHMARK_NULL_SIZE  # permutations of the copairs mAP null (1 … MAX_NULL_SIZE)

    @field_validator("normalize")
    @classmethod
    def _normalize(cls, v: str) -> str:
        if v not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {v!r}; use one of {', '.join(NORMALIZATIONS)}")
        return v

    @field_validator("null_size")
    @classmethod
    def _null(cls, v: int) -> int:
        if not 1 <= v <= MAX_NULL_SIZE:
            raise ValueError(f"null_size must lie in [1, {MAX_NULL_SIZE:,}], got {v:,} (the CPJUMP1 benchmark uses "
                             f"{BENCHMARK_NULL_SIZE:,})")
        return v


class EmbedSettings(ReadoutSettings):
    """``profile embed``: images → well profiles (see :mod:`dinocell_core.profiling.embed`)."""

    backbone: str = BASELINE  # "baseline" | "random" | "cellprofiler" | weights (.pth, run dir, checkpoint, export)
    features: str = "full"  # cellprofiler: full (cp-measure, the `measure` extra) | minimal (the 17 hand-written)
    arch: str | None = None  # needed for "random" and official .pth; else read from the weights
    patch_size: int = 8
    model_kwargs: dict[str, Any] | None = None  # extra load_backbone arguments (tiny test architectures)
    seed: int = 0  # random init
    units: str = "tiles"  # tiles (Kim et al.) | cells (crops centred on each object of a labels store)
    labels: str | None = None  # labels store (units="cells")
    crop: int = 96  # px, cells: DeepProfiler's CPJUMP1 box (≈ 57 µm at 20×)
    centre: str = "nuclei"  # cells: centroid of the nucleus or of the cell mask
    border: str = "pad"  # cells: pad | shift | skip (dinocell_core.profiling.cells)
    min_dna_fraction: float = 0.01  # tiles: share of DNA pixels above otsu_factor × Otsu for a tile to count
    otsu_factor: float = 0.7
    site_aggregation: str = "mean"
    well_aggregation: str = "mean"
    illumination: bool = False  # divide by the plates' illumination functions
    norm_percentiles: tuple[float, float] = (1.0, 99.8)
    device: str = "auto"
    precision: PrecisionName = "auto"  # auto (bf16 autocast on a CUDA GPU, fp32 on CPU) | fp32 | bf16
    chunk_sites: int = PField(32, ge=1, le=100_000)  # sites per resumable chunk

    @model_validator(mode="after")
    def _check(self) -> EmbedSettings:
        for key in ("site_aggregation", "well_aggregation"):
            if getattr(self, key) not in AGGREGATIONS:
                raise ValueError(f"{key} must be one of {AGGREGATIONS}, got {getattr(self, key)!r}")
        if self.units not in UNITS:
            raise ValueError(f"units must be one of {UNITS}, got {self.units!r}")
        if self.features not in FEATURE_SETS:
            raise ValueError(f"features must be one of {FEATURE_SETS}, got {self.features!r}")
        if self.backbone == CELLPROFILER and not self.labels:
            raise ValueError("backbone 'cellprofiler' measures the cells of a labels store: pass --labels LABELS "
                             "(made by `jump label`)")
        if self.units == "cells":
            if not self.labels:
                raise ValueError("units 'cells' needs a labels store (--labels LABELS, made by `jump label`)")
            if not 8 <= self.crop <= 4096:
                raise ValueError(f"crop must lie in [8, 4096] px, got {self.crop}")
            if self.centre not in CENTRES or self.border not in BORDERS:
                raise ValueError(f"centre must be one of {CENTRES} and border one of {BORDERS}, got "
                                 f"{self.centre!r}, {self.border!r}")
        return self

    @property
    def unit_column(self) -> str:
        return "Metadata_Cell_Count" if self.units == "cells" else "Metadata_Tile_Count"

    def fingerprint(self) -> str:
        """What a resumed run must share (the labels store is checked by its content, in the parts manifest)."""
        # precision, like device, changes the vectors only within rounding (bf16: cosine ≥ 0.99 to fp32)
        skip = {"batch_size", "device", "precision", "chunk_sites", "labels",
                *(CELL_KEYS if self.units == "tiles" else ())}
        keep = {k: v for k, v in self.model_dump().items() if k not in skip}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


class EvalSettings(ScoreSettings):
    """``profile evaluate|compare``: the CPJUMP1 copairs benchmark (see :mod:`dinocell_core.profiling.evaluate`)."""

    plate_col: str = "Metadata_Plate"
    pert_col: str = "Metadata_broad_sample"
    control_col: str = "Metadata_control_type"
    negcon_value: str = "negcon"
    negcon_label: str = "DMSO"  # what an empty perturbation of a negcon well is called (CPJUMP1 notebooks)
    target_col: str = "Metadata_target_list"  # pipe-separated compound targets
    gene_col: str = "Metadata_gene"  # CRISPR/ORF gene
    modality_col: str = "Metadata_modality"  # compound | crispr | orf; else from Metadata_Plate_Map_Name
    seed: int = 0
    threshold: float = 0.05  # BH-corrected p-value threshold
    batch_size: int = PField(20_000, ge=1, le=10_000_000)  # copairs pairs per batch
    matching: bool = True  # target/gene matching after replicate retrieval
    progress: bool = False

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError("threshold must lie in (0, 1)")
        return v
