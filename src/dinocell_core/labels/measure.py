"""Per-cell measurements of a labels store's fields (``jump label --measure``), and the one function that measures a
field from its store masks — also what ``profile embed --backbone cellprofiler`` aggregates to well profiles.

Each field's preferred masks (corrected > imported > auto) are measured on its raw fluorescent images (uint16 ÷
65535, CellProfiler's 0–1 scale; no illumination correction) into
``STORE/measurements/<features>/<plate folder>/<well>_s<SS>.parquet``: ``Metadata_Plate``, ``Metadata_Well``,
``Metadata_Site``, ``ObjectNumber`` (the cell's id in the masks) and the :mod:`dinocell_core.measure.cells` columns.
A part records which masks it measured (``dinocell_labels`` in its Parquet metadata): a field whose masks changed
since (a correction saved) is measured again, the others are kept, so a rerun resumes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dinocell_core.errors import DinocellError
from dinocell_core.io.fsutil import atomic_path
from dinocell_core.jump.channels import CHANNELS, FLUORESCENT
from dinocell_core.jump.index import Field
from dinocell_core.labels.store import LabelRow, LabelStore, StoreLock
from dinocell_core.measure.cells import CELLS, MeasureError, NUCLEI, check_features, measure_cells, table_columns

MEASUREMENTS_DIR = "measurements"
METADATA = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
_SIGNATURE_KEY = b"dinocell_labels"


def part_path(store_root: str | os.PathLike[str], features: str, row: LabelRow) -> Path:
    """Where a field's measurement part lives in the store."""
    return Path(store_root) / MEASUREMENTS_DIR / features / row.plate_folder / f"{row.well}_s{row.site:02d}.parquet"


def labels_signature(store: LabelStore, row: LabelRow, channels: Sequence[str]) -> str:
    """Which masks (source, files, their sizes and times) and channels a part measured."""
    files = []
    for rel in (row.nuclei, row.cells):
        st = (store.root / rel).stat()
        files.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
    return json.dumps({"source": row.source, "files": files, "channels": list(channels)})


def field_columns(channels: Sequence[str], features: str) -> list[str]:
    """The columns of every part (cells with their nucleus; fixed so parts concatenate into one schema)."""
    return [*METADATA, *table_columns((CELLS, NUCLEI), channels, features)]


def measure_field(store: LabelStore, row: LabelRow, root: str, field: Field, features: str,
                  channels: Sequence[int] = FLUORESCENT, storage: Any = None) -> pd.DataFrame:
    """One field's per-cell table from the store's masks ``row`` and the field's raw images (see module)."""
    from dinocell_core.jump.preprocess import read_field

    raw = read_field(root, field, list(channels), storage=storage)
    nuclei, cells = store.read_pair(row, tuple(raw.shape[1:]))
    names = [CHANNELS[c] for c in channels]
    table = measure_cells(cells, nuclei, dict(zip(names, raw)), features)
    table.insert(0, "Metadata_Site", np.int64(field.site))
    table.insert(0, "Metadata_Well", field.well)
    table.insert(0, "Metadata_Plate", field.plate)
    table = table.reindex(columns=field_columns(names, features))
    ints = ("Metadata_Site", "ObjectNumber", "Cells_Parent_Nuclei", "Cells_Children_Nuclei_Count")
    return table.astype({c: ("int64" if c in ints else "float64") for c in table.columns
                         if c not in ("Metadata_Plate", "Metadata_Well")})


def read_part(path: Path, signature: str) -> pd.DataFrame | None:
    """A stored part, if it measured the masks ``signature`` names (else None: measure again)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    meta = pq.read_schema(path).metadata or {}
    if meta.get(_SIGNATURE_KEY, b"").decode() != signature:
        return None
    return pd.read_parquet(path)


def write_part(path: Path, table: pd.DataFrame, signature: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), _SIGNATURE_KEY: signature.encode()})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def field_measurements(store: LabelStore, row: LabelRow, root: str, field: Field, features: str,
                       channels: Sequence[int] = FLUORESCENT, storage: Any = None) -> pd.DataFrame:
    """The store's part for this field when it is current, else the field measured now (nothing written)."""
    sig = labels_signature(store, row, [CHANNELS[c] for c in channels])
    cached = read_part(part_path(store.root, features, row), sig)
    return cached if cached is not None else measure_field(store, row, root, field, features, channels, storage)


def measure_store(store_root: str | os.PathLike[str], root: str, fields: Sequence[Field], features: str,
                  channels: Sequence[int] = FLUORESCENT, storage: Any = None,
                  progress: Callable[[int, int], None] | None = None) -> tuple[int, int, list[str]]:
    """Write the measurement part of every labelled field of ``fields`` not yet measured from its current masks;
    returns (parts written, parts kept, ``"<field>: why"`` of fields that could not be measured). Holds the store's
    lock, as every writer does."""
    check_features(features)
    with StoreLock(store_root, task="measure"):
        store = LabelStore.open(store_root)
        pairs = store.match(fields)
        names = [CHANNELS[c] for c in channels]
        written = kept = 0
        failed: list[str] = []
        for i, (f, row) in enumerate(pairs):  # each field with its preferred masks
            sig = labels_signature(store, row, names)
            path = part_path(store.root, features, row)
            if read_part(path, sig) is not None:
                kept += 1
            else:
                try:
                    table = measure_field(store, row, root, f, features, channels, storage)
                except MeasureError:
                    raise
                except (OSError, ValueError, DinocellError) as exc:
                    failed.append(f"{f.key}: {exc}")
                else:
                    write_part(path, table, sig)
                    written += 1
            if progress is not None:
                progress(i + 1, len(pairs))
    return written, kept, failed
