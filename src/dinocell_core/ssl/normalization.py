"""Per-plate normalisation levels (``data.normalization: plate``).

Per-field percentiles couple brightness to content: sparse bright structures set a field's 99.8th percentile, so a
field of tubular mitochondria comes out darker than a punctate one with the same raw mean, and every field is
stretched to the same range whatever its exposure. Per-plate levels keep the differences between fields of a plate:
each channel of a plate acquisition is scaled with the low/high percentiles of pixels pooled over a sample of its
negative-control wells (where the plate map names them, as CPJUMP1 profiles are normalised to negcon), else of all
its wells. Computed once per plate when the dataset is built; workers receive them with the dataset.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dinocell_core.io.images import percentiles
from dinocell_core.io.tiffio import BadImageError
from dinocell_core.jump.index import Field

log = logging.getLogger(__name__)

#: pixels pooled from each sampled field: every STRIDE-th row and column (~73k of a 1080² field)
STRIDE = 4
#: plate acquisition (plate folder) → channel → (low, high) level
PlateLevels = dict[str, dict[int, tuple[float, float]]]


def control_wells(meta_dir: Path | None, barcode: str) -> set[str]:
    """Negative-control wells of a plate per its plate map (``control_type`` negcon, or an empty ``broad_sample``:
    CPJUMP1's DMSO); empty when no plate map covers the plate."""
    if meta_dir is None:
        return set()
    from dinocell_core.profiling.metadata import well_annotations
    from dinocell_core.profiling.table import ProfileError

    try:
        ann = well_annotations(meta_dir, [barcode])
    except (ProfileError, FileNotFoundError) as exc:
        log.info("plate %s: no plate map (%s); its levels come from all wells", barcode, exc)
        return set()
    if "Metadata_control_type" in ann.columns:
        negcon = ann["Metadata_control_type"] == "negcon"
    else:
        negcon = ann["Metadata_broad_sample"] == ""
    return set(ann.loc[negcon, "Metadata_Well"])


def plate_levels(fields: Sequence[Field], channels: Sequence[int], read: Callable[[Field, int], np.ndarray],
                 low: float, high: float, n_fields: int, meta_dir: Path | None) -> PlateLevels:
    """Levels of every plate acquisition in ``fields``: ``read(field, ch)`` gives a channel before normalisation;
    up to ``n_fields`` fields per plate (negcon wells if the plate map names any) are drawn in a seeded order (the
    plate's name), unreadable ones skipped for the next."""
    by_plate: dict[str, list[int]] = {}
    for i in range(len(fields)):
        by_plate.setdefault(fields[i].plate_folder, []).append(i)
    levels: PlateLevels = {}
    for folder, members in sorted(by_plate.items()):
        controls = control_wells(meta_dir, fields[members[0]].plate)
        negcon = [i for i in members if fields[i].well in controls]
        pool = negcon or members
        order = np.random.default_rng(zlib.crc32(folder.encode())).permutation(len(pool))
        pixels: dict[int, list[np.ndarray]] = {ch: [] for ch in channels}
        used = 0
        for j in order:
            if used == n_fields:
                break
            field = fields[pool[int(j)]]
            try:
                planes = {ch: read(field, ch)[::STRIDE, ::STRIDE].ravel() for ch in channels}
            except BadImageError as exc:
                log.warning("plate levels of %s: skipping %s (%s)", folder, field.key, exc.reason)
                continue
            for ch, px in planes.items():
                pixels[ch].append(px)
            used += 1
        if not used:
            raise BadImageError(folder, "no field of the plate could be read for its normalisation levels")
        levels[folder] = {ch: percentiles(np.concatenate(px), low, high) for ch, px in pixels.items()}
        log.info("plate %s: normalisation levels from %d field(s) of %s", folder, used,
                 "negcon wells" if negcon else "all wells")
    return levels
