"""Label quality at a glance: per-field counts, area percentiles and flags (qc.csv), and a contact sheet PNG.

qc.csv has one row per field, describing the masks its labels.csv row uses: ``source`` says which (``auto`` and
``imported`` rows come from ``jump label``, with the thresholds for ``auto``; a saved correction replaces the
field's row with one of ``source`` ``corrected`` and no thresholds).

Flags: ``no_nuclei``; ``too_many`` (more cells than CellProfiler's own excess-object limit of the CPJUMP1
pipeline, 500); ``giant_cells`` (a cell over 10× the field's median cell area); ``nuclei_without_cells``
(nuclei whose cell is missing, e.g. an imported pair that does not match).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_write_bytes
from dinocell_core.io.images import normalize_percentile

log = logging.getLogger(__name__)

QC_CSV = "qc.csv"
CONTACT_SHEET = "contact_sheet.png"
QC_COLUMNS = ("plate", "well", "site", "plate_folder", "source", "n_nuclei", "n_cells", "nucleus_area_p50",
              "cell_area_p5", "cell_area_p50", "cell_area_p95", "nuclei_threshold", "cells_threshold", "flags")
MAX_OBJECTS = 500
GIANT_FACTOR = 10.0


def field_qc(nuclei: np.ndarray, cells: np.ndarray) -> dict[str, Any]:
    """Counts, area percentiles and flags of one field's masks."""
    n_area = np.bincount(nuclei.ravel())[1:]
    c_area = np.bincount(cells.ravel())[1:]
    n_area, c_area = n_area[n_area > 0], c_area[c_area > 0]
    flags = []
    if n_area.size == 0:
        flags.append("no_nuclei")
    if c_area.size > MAX_OBJECTS:
        flags.append("too_many")
    if c_area.size >= 5 and float(c_area.max()) > GIANT_FACTOR * float(np.median(c_area)):
        flags.append("giant_cells")
    if n_area.size > c_area.size:
        flags.append("nuclei_without_cells")
    pct = lambda a, q: round(float(np.percentile(a, q)), 1) if a.size else ""
    return {"n_nuclei": int(n_area.size), "n_cells": int(c_area.size), "nucleus_area_p50": pct(n_area, 50),
            "cell_area_p5": pct(c_area, 5), "cell_area_p50": pct(c_area, 50), "cell_area_p95": pct(c_area, 95),
            "flags": ";".join(flags)}


def qc_row(row: Any, stats: dict[str, Any]) -> dict[str, Any]:
    """The qc.csv row of a labels-store row (a ``LabelRow``) whose masks ``stats`` (:func:`field_qc`) describes."""
    return {"plate": row.plate, "well": row.well, "site": row.site, "plate_folder": row.plate_folder,
            "source": row.source, **stats}


FieldKey = tuple[str, str, int]  # (plate folder, well, site), as the store's


def qc_key(r: dict[str, Any]) -> FieldKey:
    """The field a qc.csv row is about: (plate folder, well, site)."""
    return (str(r["plate_folder"]), str(r["well"]), int(r["site"]))


def write_qc_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=QC_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in sorted(rows, key=qc_key):
        w.writerow({k: r.get(k, "") for k in QC_COLUMNS})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


class QCFileError(DinocellError):
    """qc.csv cannot be read as text (the message names it); it is derived from the masks and can be rebuilt."""


def read_qc_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The complete rows of qc.csv: a row cut short by a kill mid-write (columns missing, site not a number) is
    left out, so its field counts as missing and is described again from its masks."""
    if not Path(path).is_file():
        return []
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise QCFileError(f"{path}: not a readable qc.csv ({type(exc).__name__}: {exc})") from None
    return [r for r in rows if all(r.get(c) is not None for c in QC_COLUMNS) and r["site"].strip().isdigit()]


def update_qc_row(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Replace (or add) one field's row of qc.csv, keeping the other fields' rows; the file is rewritten atomically.
    An unreadable qc.csv is replaced (with a warning naming it): `jump label` describes the other fields again."""
    try:
        old = read_qc_csv(path)
    except QCFileError as exc:
        log.warning("%s; rewritten with this field's row only (run `jump label` again to describe the others)", exc)
        old = []
    rows = {qc_key(r): r for r in old}
    rows[qc_key(row)] = row
    write_qc_csv(path, list(rows.values()))


def render_tile(dna: np.ndarray, rna: np.ndarray, nuclei: np.ndarray, cells: np.ndarray,
                size: int = 256) -> np.ndarray:
    """RGB uint8 tile: DNA blue, RNA green, cell outlines yellow, nucleus outlines magenta."""
    from skimage.segmentation import find_boundaries

    rgb = np.zeros((*dna.shape, 3), np.float32)
    rgb[..., 2] = normalize_percentile(dna)
    rgb[..., 1] = 0.8 * normalize_percentile(rna)
    rgb[find_boundaries(cells, mode="inner")] = (1.0, 1.0, 0.0)
    rgb[find_boundaries(nuclei, mode="inner")] = (1.0, 0.0, 1.0)
    tile = (rgb * 255).astype(np.uint8)
    return cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA if dna.shape[0] > size else cv2.INTER_NEAREST)


def contact_sheet(tiles: Sequence[np.ndarray], captions: Sequence[str], columns: int = 4) -> np.ndarray:
    """Tiles in a grid with a caption on each (RGB uint8)."""
    if not tiles:
        raise ValueError("no tiles for a contact sheet")
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (h + 4), min(columns, len(tiles)) * (w + 4), 3), 32, np.uint8)
    for i, (tile, cap) in enumerate(zip(tiles, captions)):
        y, x = (i // columns) * (h + 4) + 2, (i % columns) * (w + 4) + 2
        t = tile.copy()
        cv2.putText(t, cap, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
        sheet[y : y + h, x : x + w] = t
    return sheet


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode {path} as PNG")
    atomic_write_bytes(path, data.tobytes())
