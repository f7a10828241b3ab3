"""Synthetic CPJUMP1 plates in the exact bucket layout: the built-in data for tests, demo and benchmarks.

Pixels follow the measured statistics of Broad Opera Phenix images (fluorescent sCMOS offset 100–400 + noise, cells
up to thousands of counts, a few saturated pixels; brightfield ~20k ± 1k with three slightly different planes in
which cells are faintly visible). Nuclei (ch5) sit inside cytoplasm/organelle signal (ch1–4); the ground-truth
instance masks are a labels store (:mod:`dinocell_core.labels.store`) at ``<source root>/ground_truth/``, outside
``Images/``, so segmentation is trained and scored through the same code path as real labels.

The biology: each *site* shows one of two phenotypes ("punctate", "tubular"; :func:`phenotype_of` — a well's
treatment sets the share of its sites that show it, so a per-well label is wrong for some sites) that differ only in
what a cell biologist looks at — organelle pattern at the 1–2-px scale: fragmented, punctate mitochondria (ch1, Mito)
and many small nucleoli (ch3, RNA) versus short mitochondrial filaments and a few large nucleoli — at the same cell
size, density and brightness. Which treatment a well gets follows the CPJUMP1-style design of :func:`well_treatment`
(DMSO negcon wells on every plate, compounds replicated across plates with graded strength, some null, pairs sharing
a target), written as CPJUMP1 metadata files so profiles can be scored with copairs.

What a model sees: the 8 uint16 channels, each normalised on its own (``jump.preprocess``), then the view of
``data.channel_mode``. In the fluorescent mean the phenotype is faint (Mito supplies ~16 % of its fine-texture
variance), so random ViT features on the mean sit near chance, while one channel (Mito) or each channel on its own
carries it; :class:`Nuisance` adds per-field focus, detector gamma and noise that every crop of a field shares and
that has nothing to do with the phenotype (tests/core/ssl/test_learning.py asks what a representation encodes).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from dinocell_core.io.fsutil import atomic_path, atomic_write_bytes
from dinocell_core.io.tiffio import write_tiff
from dinocell_core.jump.channels import ALL_CHANNELS, CHANNELS, FLUORESCENT
from dinocell_core.jump.index import (
    SOURCE_PREFIX,
    Field,
    file_name,
    well_name,
    well_row_col,
)
from dinocell_core.labels.store import GROUND_TRUTH_DIR, LabelStore

PHENOTYPES = ("punctate", "tubular")
SOURCE = SOURCE_PREFIX
S3_SOURCE = "s3://cellpainting-gallery/cpg0000-jump-pilot/source_4"
PIXEL_SIZE_M = 5.979760809567617e-07
# (batch, plate folder, sk): real CPJUMP1 names; the 2nd is not Measurement1, the 3rd is a Bleaching re-imaging
# whose files carry sk5.
PLATES: tuple[tuple[str, str, int], ...] = (
    ("2020_11_04_CPJUMP1", "BR00116991__2020-11-05T19_51_35-Measurement1", 1),
    ("2020_11_04_CPJUMP1", "BR00117005__2020-11-05T12_53_34-Measurement2", 1),
    ("2020_12_08_CPJUMP1_Bleaching", "BR00116992E__2020-11-12T01_22_40-Measurement1", 5),
    ("2020_11_04_CPJUMP1", "BR00116996__2020-11-09T15_32_10-Measurement3", 1),
)
URL_ORDER = (5, 7, 6, 8, 1, 2, 4, 3)  # URL_OrigDNA, LowZBF, HighZBF, Brightfield, Mito, AGP, ER, RNA (ref. §5)
GRID_UM = (-969.0, -323.0, 323.0, 969.0)
_OFFSETS = {1: 380, 2: 300, 3: 260, 4: 330, 5: 220}  # sCMOS offset per fluorescent channel
_GAINS = {1: 3500, 2: 2500, 3: 2000, 4: 3000, 5: 6000}  # peak signal counts per channel


@dataclass
class FixtureInfo:
    root: Path
    source_root: Path
    n_fields: int
    incomplete: list[str] = dc_field(default_factory=list)
    gaps: list[str] = dc_field(default_factory=list)
    plate_folders: list[str] = dc_field(default_factory=list)
    size: int = 0


def plate_spec(i: int) -> tuple[str, str, int]:
    if i < len(PLATES):
        return PLATES[i]
    n = 117010 + i
    return ("2020_11_04_CPJUMP1", f"BR00{n}__2020-11-{5 + i % 5:02d}T1{i % 10}_0{i % 6}_{10 + i % 50:02d}-"
            "Measurement1", 1)


@dataclass(frozen=True)
class Treatment:
    """What the fixture's compound platemap puts in one well (the same on every plate, as in CPJUMP1)."""

    broad_sample: str  # "" = DMSO, the negative control (CPJUMP1 leaves it empty)
    pert_iname: str
    control_type: str  # "negcon" or ""
    target: str  # "" for DMSO; two compounds share each target
    strength: float  # fraction of the well's sites that show ``phenotype``; 0 = no phenotype at all
    phenotype: str  # the PHENOTYPES entry the treated sites show (PHENOTYPES[0] = the DMSO look)


# strengths of compounds 0, 1, 2, …: graded, with nulls; compounds 2j and 2j+1 share target GENE{j}
DESIGN_STRENGTHS = (1.0, 1.0, 0.0, 0.5, 0.75, 0.0, 0.25, 1.0)


def well_treatment(well_index: int) -> Treatment:
    """The fixture's experimental design: even wells DMSO, odd wells compound ``well_index // 2``."""
    if well_index % 2 == 0:
        return Treatment("", "DMSO", "negcon", "", 0.0, PHENOTYPES[0])
    k = well_index // 2
    strength = DESIGN_STRENGTHS[k % len(DESIGN_STRENGTHS)]
    active = PHENOTYPES[1 + (k // 2) % (len(PHENOTYPES) - 1)]
    return Treatment(f"BRD-K{10000000 + k:08d}-001-01-1", f"fixture-compound-{k}", "", f"GENE{k // 2}", strength,
                     active if strength > 0 else PHENOTYPES[0])


def phenotype_of(well_index: int, site: int) -> str:
    """The phenotype of one site: the treatment's for a ``strength`` share of sites (spread by a golden-ratio
    sequence so any number of sites gets close to it), the DMSO look otherwise."""
    t = well_treatment(well_index)
    return t.phenotype if ((site - 1) * 0.6180339887) % 1.0 < t.strength else PHENOTYPES[0]


# ------------------------------------------------------------------------------------------------ one field

def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1] with ``cells`` bumps across the image (cheap: upsampled noise)."""
    low = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)


def _layout(size: int, rng: np.random.Generator, phenotype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell/nucleus label images and the per-cell nucleus-distance map (0 at the nucleus centre, 1 at the edge)."""
    # Both phenotypes share cell size, nucleus size and density: they differ only in organelle pattern (make_field).
    if phenotype not in PHENOTYPES:
        raise ValueError(f"unknown phenotype {phenotype!r}; use one of {PHENOTYPES}")
    cell_r, nuc_r = (14.0, 20.0), (6.0, 8.5)
    coverage = rng.uniform(0.3, 0.75)
    mean_r = sum(cell_r) / 2
    n_target = max(1, int(coverage * size * size / (np.pi * mean_r * mean_r)))
    centres: list[tuple[float, float, float]] = []
    min_gap = 0.9 * cell_r[0] + nuc_r[1]
    for _ in range(n_target * 6):
        if len(centres) >= n_target:
            break
        y, x = rng.uniform(0, size, 2)
        if all((y - cy) ** 2 + (x - cx) ** 2 >= min_gap ** 2 for cy, cx, _ in centres[-400:]):
            centres.append((y, x, rng.uniform(*cell_r)))
    seeds = np.zeros((size, size), dtype=np.int32)
    for i, (y, x, _) in enumerate(centres, start=1):
        seeds[min(int(y), size - 1), min(int(x), size - 1)] = i
    dist, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    owner = seeds[iy, ix]
    radii = np.array([0.0] + [r for _, _, r in centres], dtype=np.float32)
    wobble = 1.0 + 0.22 * _smooth(rng, size, max(2, size // 12))
    cells = np.where(dist < radii[owner] * wobble, owner, 0).astype(np.int32)
    nuclei = np.zeros_like(cells)
    rel = np.zeros((size, size), dtype=np.float32)
    rel[:] = np.float32(2.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i, (y, x, r) in enumerate(centres, start=1):
        a = rng.uniform(*nuc_r)
        b = a * rng.uniform(0.7, 1.0)
        th = rng.uniform(0, np.pi)
        y0, y1 = max(0, int(y - r - 2)), min(size, int(y + r + 3))
        x0, x1 = max(0, int(x - r - 2)), min(size, int(x + r + 3))
        dy, dx = yy[y0:y1, x0:x1] - y, xx[y0:y1, x0:x1] - x
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        d = np.sqrt(u * u + v * v)
        mine = cells[y0:y1, x0:x1] == i
        nuclei[y0:y1, x0:x1][mine & (d < 1.0)] = i
        rel[y0:y1, x0:x1] = np.where(mine, d * a / r, rel[y0:y1, x0:x1])
    # Labels are renumbered 1..n so a cell whose nucleus fell outside its (clipped) body disappears cleanly.
    keep = np.unique(nuclei)
    keep = keep[keep > 0]
    lut = np.zeros(len(centres) + 1, dtype=np.int32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lut[cells], lut[nuclei], rel


def _organelles(size: int, rng: np.random.Generator, phenotype: str, nuc_mask: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Mitochondria and nucleoli patterns (mean 1 each, so the phenotype never shows in brightness).

    punctate: round mitochondrial puncta, many small nucleoli; tubular: short randomly oriented mitochondrial
    filaments, a few large nucleoli."""
    blur = lambda img, s: cv2.GaussianBlur(img, (0, 0), s)  # noqa: E731
    if phenotype == "punctate":
        mito = blur((rng.random((size, size), dtype=np.float32) > 0.95).astype(np.float32), 1.0)
        nucleoli = blur((rng.random((size, size), dtype=np.float32) > 0.96).astype(np.float32) * nuc_mask, 1.0)
    else:
        canvas = np.zeros((size, size), np.float32)
        n_lines = int(0.05 * size * size / 7.0)
        ys, xs = rng.uniform(0, size, (2, n_lines))
        th = rng.uniform(0, np.pi, n_lines)
        half = rng.uniform(3.0, 6.0, n_lines)
        for y, x, t, h in zip(ys, xs, th, half):
            dy, dx = h * np.sin(t), h * np.cos(t)
            cv2.line(canvas, (int(x - dx), int(y - dy)), (int(x + dx), int(y + dy)), 1.0, 1, cv2.LINE_AA)
        mito = blur(canvas, 0.7)
        nucleoli = blur((rng.random((size, size), dtype=np.float32) > 0.996).astype(np.float32) * nuc_mask, 2.2)
    mito /= max(float(mito.mean()), 1e-6)
    inside = float(nucleoli[nuc_mask > 0].mean()) if nuc_mask.any() else 0.0
    nucleoli /= max(inside, 1e-6)
    return mito, nucleoli


@dataclass(frozen=True)
class Nuisance:
    """Per-field imaging variation that does not depend on the phenotype (off by default): the optical blur
    (focus) of the fluorescent channels, a detector response ``signal ** gamma`` and the noise level. Each field
    draws its values uniformly from these ranges with its own random stream, so a field's cells and organelles are
    the same with and without nuisance. The SSL augmentations (blur, gamma, noise) cover these ranges, so a
    representation learned with them can ignore what dominates random features."""

    blur_sigma: tuple[float, float] = (0.8, 0.8)  # fluorescent PSF σ in px (0.8 = the fixed default)
    gamma: tuple[float, float] = (1.0, 1.0)
    noise: tuple[float, float] = (1.0, 1.0)  # factor on the shot + read noise std


def field_seed(seed: int, plate: int, well: int, site: int) -> int:
    """The random seed of one fixture field (``plate``/``well`` indices from 0 in writing order, ``site`` from 1)."""
    return int(np.random.SeedSequence([seed, plate, well, site]).generate_state(1)[0])


def field_position(field: Field, plates: int) -> tuple[int, int]:
    """(plate index, well index) that ``make_jump_fixture(plates=plates)`` gave ``field``: the numbering that
    field_seed, phenotype_of and well_treatment take."""
    folders = [plate_spec(p)[1] for p in range(plates)]
    row, col = well_row_col(field.well)
    return folders.index(field.plate_folder), (row - 1) * 24 + col - 1


def nuisance_of(fseed: int, nuisance: Nuisance | None) -> tuple[float, float, float]:
    """(PSF σ, gamma, noise factor) that the field with seed ``fseed`` is imaged with: the ground truth a test needs
    to ask what a representation encodes besides the phenotype. Its own random stream, so the option leaves the
    field's cells and organelles unchanged."""
    nu = nuisance or Nuisance()
    nrng = np.random.default_rng([fseed, 1])
    psf, gamma, noise = (float(nrng.uniform(*r)) for r in (nu.blur_sigma, nu.gamma, nu.noise))
    return psf, gamma, noise


def make_field(size: int = 256, seed: int = 0, phenotype: str = "punctate",
               vignette: Mapping[int, np.ndarray] | None = None, nuisance: Nuisance | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic field: (channels [8, H, W] uint16 in ch1..ch8 order, nuclei labels, cell labels) (int32).

    ``vignette`` maps a channel to an H×W map (max 1) that multiplies its signal (fluorescence) or its whole
    image (brightfield), as uneven illumination does; the fixture writes the matching illumination functions.
    ``nuisance`` adds per-field blur/gamma/noise variation (:class:`Nuisance`).
    """
    rng = np.random.default_rng(seed)
    psf, gamma, noise_f = nuisance_of(seed, nuisance)
    cells, nuclei, rel = _layout(size, rng, phenotype)
    cell_mask = (cells > 0).astype(np.float32)
    nuc_mask = (nuclei > 0).astype(np.float32)
    cyto = cell_mask - nuc_mask
    n_cells = int(cells.max())
    per_cell = rng.uniform(0.6, 1.3, n_cells + 1).astype(np.float32)
    per_cell[0] = 0.0
    cell_gain = per_cell[cells]
    # Coverage varies per field (same range for both phenotypes); scale so field-mean brightness stays similar.
    coverage = max(float(cell_mask.mean()), 1e-3)
    level = np.float32(0.3 / coverage) * np.float32(rng.uniform(0.75, 1.3))
    level = min(level, np.float32(1.6))
    even = np.ones((size, size), np.float32)
    vig = dict(vignette) if vignette is not None else {}
    blur = lambda img, s: cv2.GaussianBlur(img, (0, 0), s)  # noqa: E731
    mito, nucleoli = _organelles(size, rng, phenotype, nuc_mask)
    texture = 0.75 + 0.25 * _smooth(rng, size, max(2, size // 6))
    near_nuc = np.clip(1.6 - rel, 0.0, 1.0)
    edges = np.clip(cv2.morphologyEx(cells.astype(np.float32), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)),
                    0, 1)
    signal = {
        1: cyto * cell_gain * (0.3 + 0.15 * mito),                         # Mito: puncta or filaments
        2: cell_gain * (0.25 * cyto + 0.9 * blur(edges, 1.0) * cell_mask),  # AGP: membrane + actin
        3: cell_gain * (0.35 * cyto * near_nuc + nuc_mask * (0.3 + 0.5 * nucleoli)),  # RNA: cytoplasm, nucleoli
        4: cyto * cell_gain * (0.3 + 0.7 * near_nuc) * texture,             # ER: perinuclear
        5: nuc_mask * cell_gain * (0.7 + 0.3 * texture),                    # DNA: nuclei
    }
    out = np.empty((8, size, size), dtype=np.uint16)
    for ch in FLUORESCENT:
        sig = blur(signal[ch].astype(np.float32), psf)
        if gamma != 1.0:
            sig = np.power(np.maximum(sig, 0.0), np.float32(gamma))
        sig = sig * np.float32(_GAINS[ch] * level) * vig.get(ch, even)
        noisy = sig + _OFFSETS[ch] + rng.uniform(-40, 60)
        noisy += (rng.standard_normal((size, size), dtype=np.float32)
                  * (np.float32(noise_f) * np.sqrt(np.maximum(sig, 0) * 2.0 + 225.0)))
        if ch in (1, 5):  # a few saturated pixels in the brightest structures, as in real Mito/DNA images
            flat = np.argsort(sig, axis=None)[-3:]
            noisy.flat[flat] = 65535
        out[ch - 1] = np.clip(noisy + 0.5, 0, 65535).astype(np.uint16)
    base = 20000.0 + 350.0 * _smooth(rng, size, 3)  # uneven background, weaker than the cells' contrast
    body = blur(cell_mask, 2.0)
    nuc_b = blur(nuc_mask, 1.5)
    rim = blur(edges, 1.5)
    for ch, (a_body, a_nuc, a_rim) in {6: (500.0, 200.0, 700.0), 7: (-600.0, -250.0, -400.0),
                                       8: (-350.0, -450.0, 350.0)}.items():
        bf = base + a_body * body + a_nuc * nuc_b + a_rim * rim + rng.uniform(-150, 150)
        bf *= vig.get(ch, even)
        bf += rng.standard_normal((size, size), dtype=np.float32) * 140.0
        out[ch - 1] = np.clip(bf + 0.5, 0, 65535).astype(np.uint16)
    return out, nuclei, cells


def vignette_function(size: int, ch: int, seed: int = 0) -> np.ndarray:
    """Smooth CellProfiler-style illumination function (float32, min ≈ 1, brighter at the centre)."""
    rng = np.random.default_rng([seed, ch])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    cy, cx = rng.uniform(-0.08, 0.08, 2)
    r2 = (y - cy) ** 2 + (x - cx) ** 2
    strength = (0.35, 0.6) if ch in FLUORESCENT else (0.03, 0.06)  # brightfield is lit far more evenly
    illum = 1.0 + rng.uniform(*strength) * np.exp(-r2 / 0.18)
    return (illum / illum.min()).astype(np.float32)


# --------------------------------------------------------------------------------------------- whole fixture

def phenotype_table_path(source_root: str | os.PathLike[str]) -> Path:
    return Path(source_root) / "workspace" / "metadata" / "fixture_phenotypes.csv"


def phenotype_table(source_root: str | os.PathLike[str]) -> dict[tuple[str, str], str]:
    """(plate barcode, well) → phenotype label, from the fixture's CSV."""
    path = phenotype_table_path(source_root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {source_root} a DINOCell fixture source root?")
    with open(path, encoding="utf-8", newline="") as fh:
        return {(row["plate"], row["well"]): row["phenotype"] for row in csv.DictReader(fh)}


def find_source_root(path: str | os.PathLike[str]) -> Path:
    """The ``source_4`` folder of a fixture given the fixture root or the source root itself."""
    p = Path(path)
    for cand in (p, p / SOURCE):
        if phenotype_table_path(cand).is_file():
            return cand
    raise FileNotFoundError(f"no fixture under {p} (expected {SOURCE}/workspace/metadata/fixture_phenotypes.csv)")


def _site_position(site: int) -> tuple[float, float]:
    order = [(1, 2), (0, 0), (2, 2), (0, 3), (3, 0), (1, 1), (2, 1), (1, 3), (3, 3),
             (0, 1), (0, 2), (1, 0), (2, 0), (2, 3), (3, 1), (3, 2)]
    gy, gx = order[(site - 1) % 16]
    return GRID_UM[gx] * 1e-6, GRID_UM[3 - gy] * 1e-6


def _metadata(barcode: str, well: str, row: int, col: int, site: int, size: int) -> dict[str, object]:
    px, py = _site_position(site)
    return {
        "Metadata_Plate": barcode, "Metadata_Well": well, "Metadata_Site": site,
        "Metadata_AbsPositionZ": 0.135, "Metadata_AbsTime": "2020-11-05T19:51:35.000-05:00",
        "Metadata_BinningX": 2, "Metadata_BinningY": 2, "Metadata_ChannelID": 5,
        "Metadata_ChannelName": "HOECHST 33342", "Metadata_Col": col, "Metadata_ExposureTime": 0.01,
        "Metadata_FieldID": site, "Metadata_ImageResolutionX": PIXEL_SIZE_M,
        "Metadata_ImageResolutionY": PIXEL_SIZE_M, "Metadata_ImageSizeX": size, "Metadata_ImageSizeY": size,
        "Metadata_MainEmissionWavelength": 456, "Metadata_MainExcitationWavelength": 405,
        "Metadata_MaxIntensity": 65535, "Metadata_ObjectiveMagnification": 20, "Metadata_ObjectiveNA": 1,
        "Metadata_PlaneID": 1, "Metadata_PositionX": px, "Metadata_PositionY": py, "Metadata_PositionZ": 0.0,
        "Metadata_Row": row,
    }


def _write_csv(path: Path, header: list[str], rows: list[dict[str, object]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def make_jump_fixture(out: str | os.PathLike[str], plates: int = 2, wells: int = 4, sites: int = 2,
                      size: int = 256, seed: int = 0, edge_cases: bool = True,
                      progress: Callable[[], None] | None = None, nuisance: Nuisance | None = None) -> FixtureInfo:
    """Write a synthetic CPJUMP1 tree under ``out`` (see module docstring); returns what was written.

    With ``edge_cases``: given at least 4 fields, the last field of the last plate lacks its ch3 file (an
    incomplete field, left out of load_data as pe2loaddata does); given ≥ 2 wells and ≥ 3 sites, the second well of
    the first plate has no site 2 at all (a gap, as in partial CPJUMP1 wells). ``progress()`` is called after
    each field. ``nuisance``: per-field imaging variation (:class:`Nuisance`, default none).
    """
    if plates < 1 or wells < 1 or sites < 1 or size < 32:
        raise ValueError("need plates, wells, sites ≥ 1 and size ≥ 32")
    if wells > 384 or sites > 16:
        raise ValueError("CPJUMP1 plates have at most 384 wells and 16 sites per well")
    root = Path(out)
    src = root / SOURCE
    info = FixtureInfo(root=root, source_root=src, n_fields=0, size=size)
    pheno_rows: list[dict[str, object]] = []
    total = plates * wells * sites
    truth = LabelStore.open_or_create(src / GROUND_TRUTH_DIR, {"method": "fixture", "params": {"seed": seed},
                                                               "source_root": str(src)})
    for p in range(plates):
        batch, folder, sk = plate_spec(p)
        barcode = folder.split("__")[0]
        info.plate_folders.append(folder)
        img_dir = src / "images" / batch / "images" / folder / "Images"
        img_dir.mkdir(parents=True, exist_ok=True)
        illum_dir = src / "images" / batch / "illum" / barcode
        illum_dir.mkdir(parents=True, exist_ok=True)
        vignettes = {}
        for ch in ALL_CHANNELS:
            illum = vignette_function(size, ch, seed + p)
            vignettes[ch] = illum / illum.max()
            with atomic_path(illum_dir / f"{barcode}_Illum{CHANNELS[ch]}.npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, illum)
        url_rows: list[dict[str, object]] = []
        illum_rows: list[dict[str, object]] = []
        local_dir = f"/home/ubuntu/bucket/{SOURCE.as_posix()}/images/{batch}/images/{folder}/Images"
        for w in range(wells):
            row, col = w // 24 + 1, w % 24 + 1
            well = well_name(row, col)
            treatment = well_treatment(w)
            pheno_rows.append({"plate": barcode, "plate_folder": folder, "well": well,
                               "phenotype": treatment.phenotype, "broad_sample": treatment.broad_sample,
                               "strength": treatment.strength})
            for s in range(1, sites + 1):
                if edge_cases and sites >= 3 and p == 0 and w == 1 and s == 2:
                    info.gaps.append(f"{folder}/{well}/{s}")
                    if progress is not None:
                        progress()
                    continue
                fseed = field_seed(seed, p, w, s)
                stack, nuclei, cells = make_field(size, fseed, phenotype_of(w, s), vignette=vignettes,
                                                  nuisance=nuisance)
                drop = edge_cases and total >= 4 and p == plates - 1 and w == wells - 1 and s == sites
                for ch in ALL_CHANNELS:
                    if drop and ch == 3:
                        continue
                    write_tiff(img_dir / file_name(row, col, s, ch, sk), stack[ch - 1])
                truth.write_field(Field(barcode, well, s, batch, folder, sk), nuclei, cells, "imported",
                                  flush=False)
                if progress is not None:
                    progress()
                if drop:
                    info.incomplete.append(f"{folder}/{well}/{s}/{sk} (ch3 missing)")
                    continue
                info.n_fields += 1
                meta = _metadata(barcode, well, row, col, s, size)
                url = {f"URL_Orig{CHANNELS[ch]}": f"{S3_SOURCE}/images/{batch}/images/{folder}/Images/"
                       f"{file_name(row, col, s, ch, sk)}" for ch in URL_ORDER}
                url_rows.append({**url, **meta})
                local: dict[str, object] = {}
                for ch in URL_ORDER:
                    local[f"FileName_Orig{CHANNELS[ch]}"] = file_name(row, col, s, ch, sk)
                    local[f"PathName_Orig{CHANNELS[ch]}"] = local_dir
                local.update(meta)
                for ch in URL_ORDER:
                    local[f"FileName_Illum{CHANNELS[ch]}"] = f"{barcode}_Illum{CHANNELS[ch]}.npy"
                    local[f"PathName_Illum{CHANNELS[ch]}"] = (f"/home/ubuntu/bucket/{SOURCE.as_posix()}/images/"
                                                             f"{batch}/illum/{barcode}")
                illum_rows.append(local)
        ld_dir = src / "workspace" / "load_data_csv" / batch / barcode
        meta_cols = list(_metadata(barcode, "A01", 1, 1, 1, size))
        _write_csv(ld_dir / "load_data.csv", [f"URL_Orig{CHANNELS[c]}" for c in URL_ORDER] + meta_cols, url_rows)
        illum_header = [k for c in URL_ORDER for k in (f"FileName_Orig{CHANNELS[c]}", f"PathName_Orig{CHANNELS[c]}")]
        illum_header += meta_cols
        illum_header += [k for c in URL_ORDER for k in (f"FileName_Illum{CHANNELS[c]}", f"PathName_Illum{CHANNELS[c]}")]
        _write_csv(ld_dir / "load_data_with_illum.csv", illum_header, illum_rows)
    truth.flush()
    _write_csv(phenotype_table_path(src), ["plate", "plate_folder", "well", "phenotype", "broad_sample", "strength"],
               pheno_rows)
    _write_plate_metadata(src, plates, wells, sites)
    write_perturbation_metadata(src / "workspace" / "metadata", wells)
    return info


def _write_plate_metadata(src: Path, plates: int, wells: int, sites: int) -> None:
    """experiment-metadata.tsv, barcode_platemap.csv and the platemap .txt with the real schemas (ref. §7)."""
    meta = src / "workspace" / "metadata"
    exp_cols = ["Batch", "Plate_Map_Name", "Assay_Plate_Barcode", "Perturbation", "Cell_type", "Time", "Density",
                "Antibiotics", "Cell_line", "Time_delay", "Times_imaged", "Anomaly", "Number_of_images"]
    exp_rows: list[str] = ["\t".join(exp_cols)]
    by_batch: dict[str, list[str]] = {}
    for p in range(plates):
        batch, folder, _sk = plate_spec(p)
        barcode = folder.split("__")[0]
        by_batch.setdefault(batch, []).append(barcode)
        exp_rows.append("\t".join(str(v) for v in (
            batch, "JUMP-Target-1_compound_platemap", barcode, "compound", "A549", 24, 100, "absent", "Parental",
            "Day0", 1, "none", wells * sites * 8)))
    atomic_write_bytes(meta / "experiment-metadata.tsv", ("\n".join(exp_rows) + "\n").encode())
    for batch, barcodes in by_batch.items():
        pm = meta / "platemaps" / batch
        _write_csv(pm / "barcode_platemap.csv", ["Assay_Plate_Barcode", "Plate_Map_Name"],
                   [{"Assay_Plate_Barcode": b, "Plate_Map_Name": "JUMP-Target-1_compound_platemap"} for b in barcodes])
        lines = ["well_position\tbroad_sample\tsolvent"]
        for w in range(wells):  # an empty broad_sample is a DMSO control well
            lines.append(f"{well_name(w // 24 + 1, w % 24 + 1)}\t{well_treatment(w).broad_sample}\tDMSO")
        atomic_write_bytes(pm / "platemap" / "JUMP-Target-1_compound_platemap.txt",
                           ("\n".join(lines) + "\n").encode())


COMPOUND_METADATA = ("broad_sample", "InChIKey", "pert_iname", "pubchem_cid", "gene", "pert_type", "control_type",
                     "smiles")
COMPOUND_TARGETS = ("broad_sample", "InChIKey", "pert_iname", "pubchem_cid", "target", "target_list", "pert_type",
                    "control_type", "smiles")
DMSO_ROW = {"broad_sample": "", "InChIKey": "IAZDPXIOMUYVGZ-UHFFFAOYSA-N", "pert_iname": "DMSO", "pubchem_cid": 679,
            "gene": "", "target": "", "target_list": "", "pert_type": "control", "control_type": "negcon",
            "smiles": "CS(=O)C"}


def write_perturbation_metadata(meta_dir: Path, wells: int) -> list[Path]:
    """``external_metadata/JUMP-Target-1_compound_metadata.tsv`` and ``…_compound_metadata_targets.tsv`` with
    CPJUMP1's columns (ref. profiling.md §2.4): one row per compound of the platemap plus the DMSO row;
    ``target_list`` is pipe-separated and shares the first target within each pair."""
    rows = [DMSO_ROW]
    seen: set[str] = set()
    for w in range(wells):
        t = well_treatment(w)
        if not t.broad_sample or t.broad_sample in seen:
            continue
        seen.add(t.broad_sample)
        k = w // 2
        rows.append({"broad_sample": t.broad_sample, "InChIKey": f"FIXTURE{k:07d}AAAA-UHFFFAOYSA-N",
                     "pert_iname": t.pert_iname, "pubchem_cid": 90000000 + k, "gene": t.target, "target": t.target,
                     "target_list": t.target if k % 2 else f"{t.target}|AUX{k}", "pert_type": "trt",
                     "control_type": t.control_type, "smiles": "C" * (2 + k % 7)})
    out = []
    for name, cols in (("JUMP-Target-1_compound_metadata.tsv", COMPOUND_METADATA),
                       ("JUMP-Target-1_compound_metadata_targets.tsv", COMPOUND_TARGETS)):
        text = "\n".join(["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]) + "\n"
        path = meta_dir / "external_metadata" / name
        atomic_write_bytes(path, text.encode("utf-8"))
        out.append(path)
    return out
