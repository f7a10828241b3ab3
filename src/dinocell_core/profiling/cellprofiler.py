"""CellProfiler well profiles beside the ViT's: ``profile embed ROOT --backbone cellprofiler --labels STORE``.

Every labelled field's cells are measured with CellProfiler's features (``features``: ``full`` by cp-measure, or
the ``minimal`` 17; :mod:`dinocell_core.labels.measure` — the store's ``jump label --measure`` parts are read when
they measured the current masks, else the field is measured here) and each well's profile is the **median over all
its cells** (pycytominer ``aggregate``, ``method: median``, as the CPJUMP1 profiles are made). Positional columns
(``*_Location_*``, centres, bounding-box corners, raw spatial moments) and ids are no features; a feature undefined in some well (e.g. Costes
on flat objects) is dropped and counted in ``OUT.json`` notes, since ``profile evaluate`` would drop the well.
The table has the ViT tables' metadata (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site_Count``,
``Metadata_Cell_Count`` and the CPJUMP1 annotations), so ``profile evaluate`` / ``compare`` score both alike.
Resumable per well: ``OUT.parts/well_<plate>_<well>.parquet``. Sharded (``--shard I/N``), a shard measures the wells
whose ``plate/well`` hashes to it (a well's cells are aggregated together) and the last to finish writes the table.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dinocell_core.io.fsutil import atomic_path, atomic_write_json
from dinocell_core.io.shards import Shard, ShardParts, digest
from dinocell_core.jump.channels import CHANNELS, FLUORESCENT
from dinocell_core.jump.index import Field
from dinocell_core.labels.store import LABELS_CSV, LabelStore, field_key
from dinocell_core.profiling.settings import EmbedSettings
from dinocell_core.profiling.table import ProfileError, info_path

#: ids, relations and where an object lies in the field (centres, bounding-box corners, intensity locations, raw
#: spatial moments): no phenotype; a shape feature such as ``BoundingBoxArea`` or ``CentralMoment_*`` stays
NOT_FEATURES = re.compile(r"^Metadata_|^ObjectNumber$|_Parent_|_Location_|"
                          r"_AreaShape_(Center_[XYZ]$|BoundingBox(Minimum|Maximum)_|SpatialMoment_)")


def profile_features(columns: Sequence[str]) -> list[str]:
    """The per-cell columns that are phenotype features (not ids, relations or positions in the field)."""
    return [c for c in columns if not NOT_FEATURES.search(c)]


def well_profile(cells: pd.DataFrame, n_sites: int) -> pd.DataFrame:
    """One well's cells → its one-row profile: the median of every feature over the cells (NaN-skipping)."""
    feats = profile_features(list(cells.columns))
    row = cells[feats].median(axis=0, skipna=True).to_frame().T
    meta = pd.DataFrame({"Metadata_Plate": [cells["Metadata_Plate"].iloc[0]],
                         "Metadata_Well": [cells["Metadata_Well"].iloc[0]],
                         "Metadata_Site_Count": [n_sites], "Metadata_Cell_Count": [len(cells)]})
    return pd.concat([meta, row.reset_index(drop=True)], axis=1)


def _well_part(parts: Path, plate: str, well: str) -> Path:
    return parts / f"well_{plate}_{well}.parquet"


def _open_parts(out: Path, s: EmbedSettings, store: LabelStore, fields: Sequence[Field]) -> tuple[Path, str]:
    """The parts folder (made, or checked against this run) and the digest every shard of the run shares."""
    parts = Path(f"{out}.parts")
    keys = hashlib.sha256("\n".join(f.key for f in fields).encode()).hexdigest()[:16]
    labels = hashlib.sha256((store.root / LABELS_CSV).read_bytes()).hexdigest()[:16]
    manifest = {"kind": "cellprofiler", "features": s.features, "fields": keys, "labels": str(store.root.resolve()),
                "labels_csv": labels}
    path = parts / "manifest.json"
    if path.is_file():
        if json.loads(path.read_text()) != manifest:
            raise ProfileError(f"{parts} holds a run with other features, other fields or another labels store; use "
                               "the same options to resume, or delete that folder to start over")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, manifest)
    return parts, digest(manifest)


def cellprofiler_profiles(root: str, fields: Sequence[Field], out: str | Path, s: EmbedSettings,
                          metadata: str | Path | None = None, storage: Any = None, progress: bool = True,
                          report: Callable[[str], None] | None = None, shard: Shard | None = None,
                          merge: bool = False) -> pd.DataFrame | None:
    """Measure every labelled field, median per well, annotate, write ``out`` and ``OUT.json`` (module docstring);
    ``shard`` and ``merge`` as for :func:`~dinocell_core.profiling.embed.embed_profiles`."""
    from dinocell_core.labels.measure import field_measurements
    from dinocell_core.measure.cells import check_features

    say = report or (lambda msg: print(msg, file=sys.stderr))
    if not s.labels:
        raise ProfileError("--backbone cellprofiler measures the cells of a labels store: pass --labels LABELS")
    check_features(s.features)
    store = LabelStore.open(s.labels)
    pairs = store.match(sorted(fields, key=lambda f: (f.plate, f.well, f.site, f.plate_folder, f.sk)), tree=root)
    labelled = {field_key(f) for f, _ in pairs}
    unlabelled = [f for f in fields if field_key(f) not in labelled]
    notes = []
    if unlabelled:
        notes.append(f"{len(unlabelled)} field(s) skipped: no labels in {s.labels}")
        say(notes[-1])
    wells: dict[tuple[str, str], list[tuple[Field, Any]]] = {}
    for f, row in sorted(pairs, key=lambda p: (p[0].plate, p[0].well, p[0].site)):
        wells.setdefault((f.plate, f.well), []).append((f, row))
    parts, run_digest = _open_parts(Path(out), s, store, [f for f, _ in pairs])
    shards = ShardParts(out, run_digest)

    def assemble(_: object = None) -> pd.DataFrame:
        table = _assemble(root, out, s, parts, wells, pairs, unlabelled, notes, metadata, say)
        shards.clear()
        return table

    if merge:
        return shards.merge(assemble)
    if shard is not None:
        shards.start(shard)
    mine = {key: members for key, members in wells.items() if shard is None or shard.owns("/".join(key))}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(map(len, mine.values())), desc=f"measure ({s.features})", unit="field",
                   dynamic_ncols=True)
    try:
        for (plate, well), members in mine.items():
            part = _well_part(parts, plate, well)
            if not part.is_file():
                cells = pd.concat([field_measurements(store, row, root, f, s.features, storage=storage)
                                   for f, row in members], ignore_index=True)
                if len(cells):
                    with atomic_path(part) as tmp:
                        well_profile(cells, len(members)).to_parquet(tmp, index=False)
            if bar is not None:
                bar.update(len(members))
    finally:
        if bar is not None:
            bar.close()
    if shard is None:
        return assemble()
    return shards.finish_and_merge(shard, {"wells": len(mine)}, assemble)


def _assemble(root: str, out: str | Path, s: EmbedSettings, parts: Path, wells: dict[tuple[str, str], list[Any]],
              pairs: Sequence[Any], unlabelled: Sequence[Field], notes: list[str], metadata: str | Path | None,
              say: Callable[[str], None]) -> pd.DataFrame:
    """Every well's part → the table (features undefined in some well dropped), annotated; ``OUT.json`` last."""
    from dinocell_core.profiling.metadata import annotate
    from dinocell_core.profiling.table import write_profiles

    done = [_well_part(parts, p, w) for p, w in wells]
    empty = [f"{p}/{w}" for (p, w), path in zip(wells, done) if not path.is_file()]
    if empty:
        notes.append(f"{len(empty)} well(s) have no cells and are not in the table ({', '.join(empty[:3])})")
        say(notes[-1])
    kept = [pd.read_parquet(p) for p in done if p.is_file()]
    if not kept:
        raise ProfileError(f"no labelled field of {root} holds a cell; nothing to write")
    table = pd.concat(kept, ignore_index=True)
    feats = profile_features(list(table.columns))
    undefined = [c for c in feats if table[c].isna().any()]
    if undefined:
        table = table.drop(columns=undefined)
        notes.append(f"{len(undefined)} feature(s) undefined in some well and dropped (e.g. {undefined[0]})")
        say(notes[-1])
    table = table.copy()  # one block: annotate merges it
    if metadata is not None:
        table = annotate(table, metadata)
    write_profiles(table, out)
    readout = {"channels": "each", "views": [CHANNELS[c] for c in FLUORESCENT], "tokens": f"cellprofiler {s.features}"}
    atomic_write_json(info_path(out), {
        "settings": s.model_dump(mode="json"), "readout": readout,
        "embedder": {"kind": "cellprofiler", "features": s.features, "library": _library(s.features)},
        "n_fields": len(pairs), "n_fields_without_labels": len(unlabelled),
        "n_units": int(table["Metadata_Cell_Count"].sum()), "n_wells": len(table),
        "n_features": len(profile_features(list(table.columns))), "notes": notes})
    return table


def _library(features: str) -> str:
    if features == "minimal":
        return "dinocell_core.measure.minimal"
    from importlib.metadata import version

    return f"cp-measure {version('cp-measure')}"
