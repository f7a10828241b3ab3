"""``jump label --method import --from DIR``: masks made elsewhere (Cellpose, CellProfiler label images,
hand-drawn), matched to fields by file name and checked for shape and dtype.

A mask file is named after its field's image prefix and kind: ``r01c01f01p01_nuclei.tif(f)|.png`` and
``…_cells.*`` (anything may follow the prefix before ``_nuclei``/``_cells``, e.g. ``r01c01f01p01-ch5sk1fk1fl1``).
With several plates in the tree the files must sit in a sub-folder named after the plate folder (the store's
own layout, ``DIR/<plate folder>/...``); with one plate they may also lie flat in ``DIR``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dinocell_core.jump.index import FIELD_STEM, Field
from dinocell_core.labels.store import LabelsError, check_mask, field_prefix

MASK_RE = re.compile(rf"^(?P<stem>{FIELD_STEM})[^/]*?_(?P<kind>nuclei|cells)\.(tiff?|png)$", re.IGNORECASE)


def _scan(folder: Path) -> dict[tuple[str, str], Path]:
    out: dict[tuple[str, str], Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        m = MASK_RE.match(p.name)
        if m and p.is_file():
            key = (m.group("stem").lower(), m.group("kind").lower())
            if key in out:
                raise LabelsError(f"{folder}: two {key[1]} masks for {key[0]}: {out[key].name} and {p.name}")
            out[key] = p
    return out


def match_import_files(folder: Path, fields: Sequence[Field]) -> tuple[list[tuple[Field, tuple[Path, Path]]],
                                                                      list[tuple[str, str]]]:
    """(field, (nuclei file, cells file)) for every field with both masks, and (field key, reason) for the rest."""
    if not folder.is_dir():
        raise LabelsError(f"--from {folder}: folder not found")
    plates = sorted({f.plate_folder for f in fields})
    flat = _scan(folder)
    if flat and len(plates) > 1:
        raise LabelsError(f"{folder}: masks lie flat but the tree has {len(plates)} plate folders; put each plate's "
                          f"masks in DIR/<plate folder>/ (e.g. {folder / plates[0]})")
    per_plate = {pf: _scan(folder / pf) or flat for pf in plates}
    matched, missing = [], []
    for f in fields:
        files = per_plate[f.plate_folder]
        prefix = field_prefix(f.well, f.site)
        nuc, cells = files.get((prefix, "nuclei")), files.get((prefix, "cells"))
        if nuc is not None and cells is not None:
            matched.append((f, (nuc, cells)))
        elif nuc is not None or cells is not None:
            missing.append((f.key, f"only the {'nuclei' if nuc is not None else 'cells'} mask found "
                                   f"({(nuc or cells).name}); both are needed"))
    if not matched:
        names = sorted(p.name for d in per_plate.values() for p in d.values())[:3]
        raise LabelsError(f"{folder}: no mask matches a field of the tree (expected names such as "
                          f"{field_prefix(fields[0].well, fields[0].site)}_nuclei.tiff under {folder}/<plate folder>/"
                          f"; found {', '.join(names) if names else 'no mask files'})")
    return matched, missing


def read_import_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A mask file as int32 labels, or a LabelsError naming it (not 2-D, not integer, wrong shape)."""
    from dinocell_core.io.images import read_image

    try:
        arr = read_image(path)
    except Exception as exc:
        raise LabelsError(f"{path}: cannot read mask ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and all(np.array_equal(arr[..., 0], arr[..., i]) for i in (1, 2)):
        arr = arr[..., 0]  # grey PNG stored as RGB
    return check_mask(arr, str(path), shape)
