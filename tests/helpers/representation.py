"""The held-out judge of a pretrained backbone on the synthetic fixture: what the learning test asserts and what
``benchmarks/representation.py`` tabulates per SSL mode.

Held-out plates of another fixture seed, every field with its own detector gamma (the nuisance) and its own
phenotype (``phenotype_of`` per site, not the per-well CSV). Each backbone is read out per channel (each
fluorescent channel embedded on its own, CLS concatenated; a 5-plane backbone embeds the stack) from whole 96-px
fields; the figures are site k-NN and a cross-plate probe (balanced accuracy, per-site hits kept for the paired
bootstrap), the cross-plate R² of log gamma, and the copairs replicate-retrieval mAP of well profiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dinocell_core.jump.index import Field, load_index
from dinocell_core.profiling.baseline import BaselineEmbedder
from dinocell_core.profiling.embed import (
    BackboneEmbedder,
    EmbedSettings,
    FieldReader,
    aggregate_wells,
    embed_sites,
    embedder_planes,
    find_metadata_dir,
)
from dinocell_core.profiling.evaluate import EvalSettings, evaluate_profiles
from dinocell_core.profiling.judge import (
    balanced_accuracy,
    cross_plate_r2,
    knn_hits,
    probe_hits,
    zscore,
)
from dinocell_core.profiling.metadata import annotate
from dinocell_core.synthetic.fixture import (
    Nuisance,
    field_position,
    field_seed,
    make_jump_fixture,
    nuisance_of,
    phenotype_of,
)

#: a per-field detector gamma spanning what the fixture's images vary by; the phenotype is the organelle pattern
NUISANCE = Nuisance(gamma=(0.6, 1.6))
HELD_OUT_SEED = 1
HELD_OUT_PLATES = 4


def make_roots(base: Path) -> tuple[Path, Path]:
    """SSL data (2 plates × 8 wells × 4 sites, seed 0) and held-out plates (4 × 16 × 4, seed 1), 96 px, both with
    the per-field imaging nuisance :data:`NUISANCE`."""
    train = make_jump_fixture(base / "train", plates=2, wells=8, sites=4, size=96, seed=0, nuisance=NUISANCE).root
    held_out = make_jump_fixture(base / "held_out", plates=HELD_OUT_PLATES, wells=16, sites=4, size=96,
                                 seed=HELD_OUT_SEED, edge_cases=False, nuisance=NUISANCE).root
    return train, held_out


@dataclass(frozen=True)
class HeldOut:
    """The held-out fields (sorted as profile embed sorts them) with each site's phenotype, well, plate and the
    detector gamma it was imaged with (the fixture's ground truth)."""

    root: Path
    meta: Path
    fields: list[Field]
    y: np.ndarray
    groups: np.ndarray
    plates: np.ndarray
    log_gamma: np.ndarray


def held_out_set(root: Path, seed: int = HELD_OUT_SEED, plates: int = HELD_OUT_PLATES) -> HeldOut:
    fields = sorted(load_index(str(root)), key=lambda f: (f.plate, f.well, f.site, f.plate_folder, f.sk))
    y, log_gamma = [], []
    for f in fields:
        p, w = field_position(f, plates)
        y.append(phenotype_of(w, f.site))
        log_gamma.append(math.log(nuisance_of(field_seed(seed, p, w, f.site), NUISANCE)[1]))
    return HeldOut(root, find_metadata_dir(str(root)), fields, np.array(y),
                   np.array([f"{f.plate}/{f.well}" for f in fields]), np.array([f.plate for f in fields]),
                   np.array(log_gamma))


class CachedReader(FieldReader):
    """Reads each held-out field once for all the backbones judged on it (decoding dominates a tiny ViT's time)."""

    def __init__(self, root: Path, s: EmbedSettings, in_chans: int) -> None:
        super().__init__(str(root), s, in_chans=in_chans)
        self.cache: dict[str, dict[str, np.ndarray]] = {}

    def __call__(self, field: Field) -> dict[str, np.ndarray]:
        if field.key not in self.cache:
            self.cache[field.key] = super().__call__(field)
        return self.cache[field.key]


_READERS: dict[tuple[str, str, int], CachedReader] = {}


@dataclass(frozen=True)
class Judged:
    """One backbone's held-out figures; the hit arrays feed the paired bootstrap."""

    knn: np.ndarray  # per site: k-NN right?
    probe: np.ndarray  # per site of the scored plates: probe right? (NaN elsewhere)
    gamma_r2: float
    mean_map: float
    y: np.ndarray

    @property
    def knn_acc(self) -> float:
        return balanced_accuracy(self.knn, self.y)

    @property
    def probe_acc(self) -> float:
        return balanced_accuracy(self.probe, self.y)

    def row(self, name: str) -> str:
        return (f"  {name:<30} k-NN {self.knn_acc:.3f}   probe {self.probe_acc:.3f}   mAP {self.mean_map:.3f}   "
                f"gamma R² {self.gamma_r2:.3f}")


def judge(embedder: object, ho: HeldOut, channels: str = "each") -> Judged:
    """Per channel by default (a 5-plane backbone embeds the stack whatever ``channels`` says)."""
    s = EmbedSettings(tile=96, tokens="cls", device="cpu", channels=channels)
    planes = embedder_planes(embedder)
    key = (str(ho.root), channels, planes)
    if key not in _READERS:
        _READERS[key] = CachedReader(ho.root, s, planes)
    sites, names = embed_sites(ho.fields, _READERS[key], embedder, s)
    x = sites[names].to_numpy(np.float64, copy=True)
    if isinstance(embedder, BaselineEmbedder):  # statistics on different scales: z-score before the cosine
        x = zscore(x)
    wells = annotate(aggregate_wells(sites, names, s.well_aggregation), ho.meta)
    ev = evaluate_profiles(wells, EvalSettings(null_size=10_000, matching=False), source=str(ho.root))
    return Judged(knn_hits(x, ho.y, ho.groups), probe_hits(x, ho.y, ho.plates),
                  cross_plate_r2(x, ho.log_gamma, ho.plates), ev.tasks["replicate_retrieval"].summary["mean_map"],
                  ho.y)


def backbone_embedder(backbone: torch.nn.Module) -> BackboneEmbedder:
    return BackboneEmbedder(backbone, torch.device("cpu"))
