"""The labels store: per-field nuclei and cell masks for a CPJUMP1 tree, kept beside it (never inside it).

Contract (docs/labels.md)::

    LABELS/labels.csv       one row per labelled field: plate, well, site, nuclei, cells, source, cytoplasm,
                            original_source, original_nuclei, original_cells, original_cytoplasm
                            (paths relative to LABELS)
    LABELS/manifest.json    format, version, method, params, source root, counts
    LABELS/<plate folder>/r01c01f01p01_nuclei.tiff     LZW label TIFFs (uint16, uint32 past 65,534 objects)
    LABELS/<plate folder>/r01c01f01p01_cells.tiff      same ids as the nuclei (cell i holds nucleus i)
    LABELS/<plate folder>/r01c01f01p01_cytoplasm.tiff  cells minus the nuclei's interior (IdentifyTertiaryObjects)
    LABELS/qc.csv           one row per field: counts, area percentiles, flags of the masks in use, and their source

``source`` is ``auto`` (made by ``jump label``), ``imported`` (made elsewhere) or ``corrected`` (edited by a
person) and says where the row's masks came from. Corrections are written to ``*.corrected.tiff`` files and win:
the row then points at them, and the masks they replaced (auto or imported) stay on disk, named in the
``original_*`` columns (empty for a field nobody corrected). ``get(key, source)`` reads either.
Every write is atomic (mask files first, then the CSV), so a crash never leaves a row pointing at a half file.
A version-1 store (one row per source, no cytoplasm) is read with its rows merged the same way.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_path, atomic_write_bytes, atomic_write_json
from dinocell_core.io.locks import FolderLock
from dinocell_core.jump.index import SOURCE_PREFIX, Field, check_folder_name, field_stem, well_row_col

LABELS_CSV = "labels.csv"
MANIFEST = "manifest.json"
STORE_LOCK = ".labels.lock"  # held by the one process writing the store (see StoreLock)
COLUMNS = ("plate", "well", "site", "nuclei", "cells", "source")  # required; the rest may be absent (version 1)
EXTRA_COLUMNS = ("cytoplasm", "original_source", "original_nuclei", "original_cells", "original_cytoplasm")
SOURCES = ("auto", "imported", "corrected")
KINDS = ("nuclei", "cells", "cytoplasm")
FORMAT = "dinocell-labels"
FORMAT_VERSION = 2
GROUND_TRUTH_DIR = "ground_truth"  # where the synthetic fixture keeps its true masks (a labels store)


class LabelsError(DinocellError):
    """A labels store (or a mask in it) is unusable; the message names the file and says why."""


class StoreLock(FolderLock):
    """One writer per labels store: ``jump label`` holds it for its whole run (``task="run"``), a saved correction
    while it writes (``task="save"``), a measurement pass while it writes its parts (``task="measure"``). Without it a run's periodic rewrite of labels.csv / qc.csv would silently
    drop a correction saved meanwhile. The lock file names the holder's task, so a refusal says who writes and
    what the refused caller can do."""

    error = LabelsError
    TASKS = {"run": "a `jump label` run", "save": "a save of corrected masks",
             "measure": "a `jump label --measure` pass"}

    def __init__(self, root: str | os.PathLike[str], task: str = "save") -> None:
        super().__init__(root, STORE_LOCK)
        if task not in self.TASKS:
            raise ValueError(f"store lock task must be one of {sorted(self.TASKS)}, not {task!r}")
        self.task = task

    def holder_note(self) -> dict[str, Any]:
        return {"task": self.task}

    def busy_message(self, holder: dict[str, Any]) -> str:
        who = self.TASKS.get(str(holder.get("task")), "another writer")
        advice = ("wait for it to finish, or label into another folder" if self.task in ("run", "measure") else
                  "nothing was written — save again when it has finished")
        return (f"labels store {self.folder} is being written by pid {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} ({who}; lock {self.path}): {advice}")


FieldKey = tuple[str, str, int]  # (plate folder, well, site)


def field_prefix(well: str, site: int) -> str:
    """The image-name prefix of a field: ``A01``, site 1 → ``r01c01f01p01``."""
    return field_stem(*well_row_col(well), site)


def field_key(field: Field) -> FieldKey:
    return (field.plate_folder, field.well, field.site)


def mask_paths(plate_folder: str, well: str, site: int, source: str) -> tuple[str, str, str]:
    """Relative paths of a field's nuclei, cells and cytoplasm masks for ``source`` (corrections get their own)."""
    if source not in SOURCES:
        raise LabelsError(f"label source must be one of {', '.join(SOURCES)}, not {source!r}")
    problem = check_folder_name(plate_folder)
    if problem is not None:  # masks go to LABELS/<plate folder>/: never outside the store
        raise LabelsError(f"{well} site {site}: {problem}; its masks would be written outside the labels store")
    tag = ".corrected" if source == "corrected" else ""
    stem = f"{plate_folder}/{field_prefix(well, site)}"
    return f"{stem}_nuclei{tag}.tiff", f"{stem}_cells{tag}.tiff", f"{stem}_cytoplasm{tag}.tiff"


@dataclass(frozen=True)
class LabelRow:
    """One field's labels: the masks in use (``source``) and, after a correction, the ones it replaced."""

    plate: str
    well: str
    site: int
    nuclei: str
    cells: str
    source: str
    cytoplasm: str = ""  # empty in version-1 stores
    original_source: str = ""  # "" unless a correction replaced auto/imported masks, which stay on disk
    original_nuclei: str = ""
    original_cells: str = ""
    original_cytoplasm: str = ""

    @property
    def plate_folder(self) -> str:
        return self.nuclei.split("/", 1)[0]

    @property
    def key(self) -> FieldKey:
        return (self.plate_folder, self.well, self.site)

    def path(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"mask kind must be one of {', '.join(KINDS)}, not {kind!r}")
        return {"nuclei": self.nuclei, "cells": self.cells, "cytoplasm": self.cytoplasm}[kind]

    def files(self) -> list[str]:
        """Every mask file the row names (its own and the originals)."""
        return [p for p in (self.nuclei, self.cells, self.cytoplasm, self.original_nuclei, self.original_cells,
                            self.original_cytoplasm) if p]

    def original(self) -> LabelRow | None:
        """The replaced masks as a row of their own source (None when nothing was replaced)."""
        if not self.original_source:
            return None
        return LabelRow(self.plate, self.well, self.site, self.original_nuclei, self.original_cells,
                        self.original_source, self.original_cytoplasm)

    def with_original(self, other: LabelRow | None) -> LabelRow:
        """This row keeping ``other``'s masks as its originals (``None``: none)."""
        if other is None:
            return replace(self, original_source="", original_nuclei="", original_cells="", original_cytoplasm="")
        return replace(self, original_source=other.source, original_nuclei=other.nuclei,
                       original_cells=other.cells, original_cytoplasm=other.cytoplasm)

    def csv_values(self) -> list[object]:
        return [self.plate, self.well, self.site, self.nuclei, self.cells, self.source, self.cytoplasm,
                self.original_source, self.original_nuclei, self.original_cells, self.original_cytoplasm]


def merge_row(existing: LabelRow | None, new: LabelRow) -> LabelRow:
    """The field's one row after ``new`` is written: a correction wins and keeps what it replaced as the original
    (a second correction keeps the first one's original); auto/imported masks under a correction become the
    original; otherwise ``new`` replaces ``existing``."""
    if existing is None:
        return new
    if new.source == "corrected":
        return new.with_original(existing.original() if existing.source == "corrected" else existing)
    if existing.source == "corrected":
        return existing.with_original(new)
    return new


def _merged(rows: Iterable[LabelRow]) -> dict[FieldKey, LabelRow]:
    """One row per field from rows as read (a version-1 store has one per source), merged as writes merge them."""
    out: dict[FieldKey, LabelRow] = {}
    for row in rows:
        out[row.key] = merge_row(out.get(row.key), row)
    return out


def _mask_dtype(labels: np.ndarray) -> np.dtype:
    return np.dtype(np.uint16) if int(labels.max(initial=0)) < np.iinfo(np.uint16).max else np.dtype(np.uint32)


def check_mask(mask: np.ndarray, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A 2-D, non-negative integer label image (of ``shape`` when given) as int32, or a LabelsError saying why."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise LabelsError(f"{name}: a mask must be a 2-D label image, got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.integer) or m.dtype == np.bool_:
        raise LabelsError(f"{name}: a mask must hold integer object ids, got dtype {m.dtype}")
    if m.size and int(m.min()) < 0:
        raise LabelsError(f"{name}: a mask must not hold negative ids")
    if m.size and int(m.max()) > np.iinfo(np.int32).max:
        raise LabelsError(f"{name}: object ids beyond int32")
    if shape is not None and tuple(m.shape) != tuple(shape):
        raise LabelsError(f"{name}: mask shape {tuple(m.shape)} differs from the field's image shape {tuple(shape)}")
    return m.astype(np.int32, copy=False)


class LabelStore:
    """Read and write one labels store (thread-safe within a process: napari saves from a worker thread)."""

    def __init__(self, root: str | os.PathLike[str], rows: Iterable[LabelRow] = (),
                 manifest: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.manifest: dict[str, Any] = dict(manifest or {})
        self._rows: dict[FieldKey, LabelRow] = _merged(rows)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ open / create
    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> LabelStore:
        """An existing store; a missing or malformed labels.csv / manifest.json is a LabelsError naming it."""
        root = Path(root)
        csv_path = root / LABELS_CSV
        if not csv_path.is_file():
            raise LabelsError(f"{root}: not a labels store ({LABELS_CSV} missing; make one with "
                              "`dinocell-core jump label ROOT -o LABELS`)")
        manifest: dict[str, Any] = {}
        if (root / MANIFEST).is_file():
            try:
                manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise LabelsError(f"{root / MANIFEST}: cannot read the manifest ({exc})") from None
            if manifest.get("format") != FORMAT:
                raise LabelsError(f"{root / MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        return cls(root, _read_rows(csv_path), manifest)

    @classmethod
    def open_or_create(cls, root: str | os.PathLike[str], manifest: dict[str, Any]) -> LabelStore:
        """Open ``root`` when it is a store (resume), else start an empty one with ``manifest``."""
        root = Path(root)
        if (root / LABELS_CSV).is_file():
            store = cls.open(root)
            store.manifest.update({k: v for k, v in manifest.items() if k not in store.manifest})
            return store
        leftovers = {STORE_LOCK, *(p.name for p in orphan_temp_files(root))}  # a first write killed midway
        if root.exists() and any(p.name not in leftovers for p in root.iterdir()):
            raise LabelsError(f"{root}: folder exists, is not empty and holds no {LABELS_CSV}; choose an empty "
                              "or new folder for the labels store")
        store = cls(root, (), {"format": FORMAT, "version": FORMAT_VERSION,
                               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **manifest})
        store.flush()
        return store

    # ----------------------------------------------------------------------------------------------- reading
    @property
    def rows(self) -> list[LabelRow]:
        with self._lock:
            return sorted(self._rows.values(), key=_row_order)

    def get(self, key: FieldKey, source: str) -> LabelRow | None:
        """The field's masks from ``source``: its row, or the originals a correction replaced, or None."""
        with self._lock:
            row = self._rows.get(key)
        if row is None:
            return None
        if row.source == source:
            return row
        return row.original() if row.original_source == source else None

    def best(self, key: FieldKey, corrected_only: bool = False) -> LabelRow | None:
        """The field's row (its preferred masks; ``corrected_only``: only when a person corrected it)."""
        with self._lock:
            row = self._rows.get(key)
        if row is None or (corrected_only and row.source != "corrected"):
            return None
        return row

    def keys(self) -> set[FieldKey]:
        with self._lock:
            return set(self._rows)

    def read(self, row: LabelRow, kind: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """One mask as int32, checked (2-D, integer, non-negative, ``shape`` when given)."""
        from dinocell_core.io.tiffio import BadImageError, read_tiff

        if not row.path(kind):
            raise LabelsError(f"{self.root / LABELS_CSV}: {row.key} has no {kind} mask (a store made before "
                              f"cytoplasm was stored; label the field again into a new store)")
        path = self.root / row.path(kind)
        try:
            arr = read_tiff(path)
        except BadImageError as exc:
            raise LabelsError(f"{path}: {exc.reason} (listed in {self.root / LABELS_CSV})") from None
        return check_mask(arr, str(path), shape)

    def read_pair(self, row: LabelRow, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        nuclei = self.read(row, "nuclei", shape)
        return nuclei, self.read(row, "cells", nuclei.shape)

    def match(self, fields: Sequence[Field], corrected_only: bool = False,
              tree: str = "the tree") -> list[tuple[Field, LabelRow]]:
        """Fields of ``fields`` that have labels, each with its preferred row; corrected fields first.

        A store that matches none of the fields (another plate layout, another tree) is a LabelsError that lists
        both sides' plate folders, so the mix-up is visible."""
        pairs = []
        for f in fields:
            row = self.best(field_key(f), corrected_only)
            if row is not None:
                pairs.append((f, row))
        if not pairs:
            what = "corrected labels" if corrected_only else "labels"
            mine = sorted({k[0] for k in self.keys()})
            theirs = sorted({f.plate_folder for f in fields})
            raise LabelsError(f"labels store {self.root} has no {what} for any of the {len(fields)} fields of "
                              f"{tree}: the store's plate folders are {_few(mine)}, the tree's are {_few(theirs)} "
                              f"(same plates? same wells and sites?)")
        pairs.sort(key=lambda p: (p[1].source != "corrected", _row_order(p[1])))
        return pairs

    def counts(self) -> dict[str, int]:
        """Fields per source of their row, and all fields."""
        return _counts(self.rows)

    # ----------------------------------------------------------------------------------------------- writing
    def write_field(self, field: Field, nuclei: np.ndarray, cells: np.ndarray, source: str,
                    flush: bool = True) -> LabelRow:
        """Write a field's masks for ``source`` (atomic TIFFs, then the CSV unless ``flush=False``); returns the
        field's row as stored (a correction keeps the masks it replaced as the originals). With ``flush``, the
        field's qc.csv row is then replaced by one describing these masks when they are the row's (a saved
        correction), so QC never describes masks no longer in use; ``flush=False`` writers own qc.csv."""
        nuc = check_mask(nuclei, f"{field.key} nuclei")
        cel = check_mask(cells, f"{field.key} cells", nuc.shape)
        if not flush:  # a batch writer, which holds the StoreLock for its run
            return self.add(write_masks(self.root, field, nuc, cel, source), flush=False)
        with StoreLock(self.root):
            self._reload()  # another process may have written the store since it was opened
            merged = self.add(write_masks(self.root, field, nuc, cel, source))
            if merged.source == source:
                from dinocell_core.labels import qc

                with self._lock:
                    qc.update_qc_row(self.root / qc.QC_CSV, qc.qc_row(merged, qc.field_qc(nuc, cel)))
        return merged

    def _reload(self) -> None:
        """Rows as labels.csv has them now (no-op for a store not yet written)."""
        path = self.root / LABELS_CSV
        if path.is_file():
            rows = _merged(_read_rows(path))
            with self._lock:
                self._rows = rows

    def add(self, row: LabelRow, flush: bool = True) -> LabelRow:
        """Record ``row``'s masks for its field (see :func:`merge_row`); returns the field's row."""
        with self._lock:
            merged = self._rows[row.key] = merge_row(self._rows.get(row.key), row)
        if flush:
            self.flush()
        return merged

    def remove(self, key: FieldKey, source: str) -> None:
        """Forget the field's ``source`` masks (their files stay; the next flush rewrites the CSV): a row whose own
        masks are dropped falls back to its originals, if any."""
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                return
            if row.source == source:
                original = row.original()
                if original is None:
                    del self._rows[key]
                else:
                    self._rows[key] = original
            elif row.original_source == source:
                self._rows[key] = row.with_original(None)

    def flush(self) -> None:
        """labels.csv and manifest.json, atomically (counts refreshed)."""
        rows = self.rows
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS + EXTRA_COLUMNS)
        for r in rows:
            w.writerow(r.csv_values())
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.root / LABELS_CSV, buf.getvalue().encode("utf-8"))
            self.manifest["counts"] = {**self.manifest.get("counts", {}), **_counts(rows)}
            self.manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            atomic_write_json(self.root / MANIFEST, self.manifest)


#: the temp names :func:`atomic_path` gives the store's own files while they are written
_STORE_TEMPS = tuple(f".{name}.*.tmp" for name in (LABELS_CSV, MANIFEST, "qc.csv", "skipped.csv",
                                                   "contact_sheet.png"))
_MASK_TEMPS = ".r*c*f*p*_*.tiff.*.tmp"


def orphan_temp_files(root: str | os.PathLike[str]) -> list[Path]:
    """Temp files of the store's own files (labels.csv, manifest, qc.csv, masks …) that a writer killed mid-write
    left behind; only the :class:`StoreLock` holder may delete them (another writer's could be in flight)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for pattern in _STORE_TEMPS for p in root.glob(pattern)]
    return found + [p for d in root.iterdir() if d.is_dir() for p in d.glob(_MASK_TEMPS)]


def write_masks(root: Path, field: Field, nuclei: np.ndarray, cells: np.ndarray, source: str) -> LabelRow:
    """A field's nuclei, cells and cytoplasm (cells minus the nuclei's interior, as CellProfiler's
    IdentifyTertiaryObjects with "shrink smaller objects") TIFFs under ``root``, and the row naming them."""
    from dinocell_core.labels.cellprofiler import cytoplasm

    rel_n, rel_c, rel_y = mask_paths(field.plate_folder, field.well, field.site, source)
    write_mask(root / rel_n, nuclei)
    write_mask(root / rel_c, cells)
    write_mask(root / rel_y, cytoplasm(cells, nuclei))
    return LabelRow(field.plate, field.well, field.site, rel_n, rel_c, source, rel_y)


def write_mask(path: Path, labels: np.ndarray) -> None:
    """One label TIFF, LZW, written atomically (uint16 when the ids fit)."""
    from dinocell_core.io.tiffio import write_tiff

    with atomic_path(path) as tmp:
        write_tiff(tmp, np.ascontiguousarray(labels.astype(_mask_dtype(labels), copy=False)))


def _counts(rows: Sequence[LabelRow]) -> dict[str, int]:
    out = {s: 0 for s in SOURCES}
    for r in rows:
        out[r.source] += 1
    out["fields"] = len({r.key for r in rows})
    return out


def _row_order(r: LabelRow) -> tuple[str, int, int, int]:
    row, col = well_row_col(r.well)
    return (r.plate_folder, row, col, r.site)


def _few(items: Sequence[str], n: int = 3) -> str:
    if not items:
        return "none"
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _read_rows(path: Path) -> list[LabelRow]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LabelsError(f"{path}: columns {', '.join(missing)} missing (a labels.csv has "
                                  f"{', '.join(COLUMNS)})")
            rows = []
            for i, rec in enumerate(reader, start=2):
                try:
                    row = LabelRow(rec["plate"], rec["well"], int(rec["site"]), rec["nuclei"], rec["cells"],
                                   rec["source"], *(rec.get(c) or "" for c in EXTRA_COLUMNS))
                    well_row_col(row.well)
                except (ValueError, TypeError, IndexError):
                    raise LabelsError(f"{path} line {i}: bad plate/well/site {rec!r}") from None
                if row.source not in SOURCES or row.original_source not in ("", *SOURCES):
                    raise LabelsError(f"{path} line {i}: source {row.source!r} / original_source "
                                      f"{row.original_source!r} is not one of {', '.join(SOURCES)}")
                if bool(row.original_source) != bool(row.original_nuclei and row.original_cells):
                    raise LabelsError(f"{path} line {i}: original_source needs original_nuclei and original_cells "
                                      "(and the other way round)")
                for rel in row.files():
                    if os.path.isabs(rel) or ".." in Path(rel).parts or "/" not in rel:
                        raise LabelsError(f"{path} line {i}: mask path {rel!r} must be <plate folder>/<file> "
                                          "relative to the store")
                rows.append(row)
            return rows
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read ({exc})") from None


def find_labels_root(path: str | os.PathLike[str]) -> Path:
    """The default store of a tree: ``ground_truth/`` (the fixture's true masks) under the tree or its source root."""
    p = Path(path)
    for cand in (p / GROUND_TRUTH_DIR, p / SOURCE_PREFIX / GROUND_TRUTH_DIR):
        if (cand / LABELS_CSV).is_file():
            return cand
    raise FileNotFoundError(f"no labels store given and none at {p / GROUND_TRUTH_DIR} or "
                            f"{p / SOURCE_PREFIX / GROUND_TRUTH_DIR}: set data.labels to a store made by "
                            "`dinocell-core jump label ROOT -o LABELS`")
