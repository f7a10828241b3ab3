"""Ground-truth masks beside a CPJUMP1 tree: the format ``train-decoder`` / ``evaluate`` read with ``format: jump``.

Layout (outside ``images/`` so indexers never see a mask as a channel)::

    <source root>/ground_truth/<batch>/<plate folder>/r{RR}c{CC}f{FF}_{nuclei|cells}.tiff

Label TIFFs of integer ids (0 = background). The synthetic fixture writes this layout; so can any tool.
"""

from __future__ import annotations

import os
from pathlib import Path

from dinocell_core.jump.index import Field, well_row_col

GROUND_TRUTH_DIR = "ground_truth"
KINDS = ("nuclei", "cells")
SOURCE_PREFIX = Path("cpg0000-jump-pilot") / "source_4"  # bucket layout: <root>/cpg0000-jump-pilot/source_4


def ground_truth_path(source_root: str | os.PathLike[str], field: Field, kind: str) -> Path:
    """The label TIFF of ``kind`` (nuclei or cells) for ``field``."""
    if kind not in KINDS:
        raise ValueError(f"ground-truth kind must be 'nuclei' or 'cells', not {kind!r}")
    r, c = well_row_col(field.well)
    name = f"r{r:02d}c{c:02d}f{field.site:02d}_{kind}.tiff"
    return Path(source_root) / GROUND_TRUTH_DIR / field.batch / field.plate_folder / name


def find_ground_truth_root(path: str | os.PathLike[str]) -> Path:
    """The source root holding ``ground_truth/``, given it or the bucket root above it."""
    p = Path(path)
    for cand in (p, p / SOURCE_PREFIX):
        if (cand / GROUND_TRUTH_DIR).is_dir():
            return cand
    raise FileNotFoundError(f"no {GROUND_TRUTH_DIR}/ folder under {p} or {p / SOURCE_PREFIX}: format 'jump' needs "
                            f"masks as {GROUND_TRUTH_DIR}/<batch>/<plate folder>/rRRcCCfFF_<nuclei|cells>.tiff")
