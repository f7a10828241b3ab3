"""CPJUMP1 perturbation metadata: barcode → platemap → well → perturbation annotations, as pycytominer ``annotate``.

Reads the real files of jump-cellpainting/2024_Chandrasekaran_NatureMethods (``metadata/platemaps/<batch>/
barcode_platemap.csv``, ``platemap/<Plate_Map_Name>.txt``, the compound/CRISPR/ORF ``*.tsv``) or the same files
under a source's ``workspace/metadata/``. Every platemap and perturbation column gets the ``Metadata_`` prefix, as
``annotate`` does, so embedded profiles carry the columns of CPJUMP1's own profiles. Perturbation tables are joined
only to platemaps of their modality (the empty ``broad_sample`` is DMSO on compound plates but an empty well on
CRISPR/ORF plates).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dinocell_core.profiling.table import ProfileError

MODALITIES = ("compound", "crispr", "orf")


def _read(path: Path, sep: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def plate_map_modality(name: str) -> str:
    """``JUMP-Target-1_compound_platemap`` → ``compound`` (the benchmark's rule: the 2nd ``_`` token)."""
    parts = name.split("_")
    return parts[1].lower() if len(parts) > 1 else ""


def _file_modality(path: Path) -> str | None:
    tokens = path.stem.lower().split("_")
    found = [m for m in MODALITIES if m in tokens]
    return found[0] if found else None


def barcode_platemaps(meta_dir: Path) -> dict[str, tuple[str, Path]]:
    """barcode → (Plate_Map_Name, platemap .txt path) from every ``barcode_platemap.csv`` under ``meta_dir``."""
    out: dict[str, tuple[str, Path]] = {}
    for csv_path in sorted(meta_dir.rglob("barcode_platemap.csv")):
        df = _read(csv_path, ",")
        missing = {"Assay_Plate_Barcode", "Plate_Map_Name"} - set(df.columns)
        if missing:
            raise ProfileError(f"{csv_path}: missing column(s) {sorted(missing)}")
        for barcode, name in zip(df["Assay_Plate_Barcode"], df["Plate_Map_Name"]):
            out.setdefault(barcode.strip(), (name.strip(), csv_path.parent / "platemap" / f"{name.strip()}.txt"))
    return out


def perturbation_tables(meta_dir: Path) -> dict[str | None, pd.DataFrame]:
    """modality (None = applies to all) → one row per broad_sample, columns merged over that modality's files
    (e.g. ``…_compound_metadata.tsv`` then ``…_compound_metadata_targets.tsv`` adds target/target_list)."""
    merged: dict[str | None, pd.DataFrame] = {}
    for path in sorted(meta_dir.rglob("*.tsv")):
        head = _read(path, "\t")
        if "broad_sample" not in head.columns:
            continue
        df = head.drop_duplicates("broad_sample")
        m = _file_modality(path)
        if m not in merged:
            merged[m] = df
            continue
        new = [c for c in df.columns if c not in merged[m].columns]
        if new:
            merged[m] = merged[m].merge(df[["broad_sample", *new]], on="broad_sample", how="outer")
        else:
            extra = df[~df["broad_sample"].isin(merged[m]["broad_sample"])]
            merged[m] = pd.concat([merged[m], extra], ignore_index=True)
    return merged


def well_annotations(meta_dir: str | os.PathLike[str], plates: list[str]) -> pd.DataFrame:
    """One row per (plate, well) of the plates' platemaps with every ``Metadata_*`` column."""
    root = Path(meta_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"metadata folder {root} not found")
    maps = barcode_platemaps(root)
    if not maps:
        raise ProfileError(f"{root}: no barcode_platemap.csv found (CPJUMP1 keeps it in platemaps/<batch>/)")
    missing = [p for p in plates if p not in maps]
    if missing:
        raise ProfileError(f"plate(s) {missing[:5]} are not in any barcode_platemap.csv under {root}")
    pert = perturbation_tables(root)
    parts: list[pd.DataFrame] = []
    for plate in plates:
        name, txt = maps[plate]
        if not txt.is_file():
            raise ProfileError(f"platemap {txt} (Plate_Map_Name {name!r} of plate {plate}) not found")
        pm = _read(txt, "\t")
        if not {"well_position", "broad_sample"} <= set(pm.columns):
            raise ProfileError(f"{txt}: needs columns well_position and broad_sample, has {list(pm.columns)}")
        mod = plate_map_modality(name)
        for key in (mod, None):
            table = pert.get(key)
            if table is not None:
                cols = [c for c in table.columns if c == "broad_sample" or c not in pm.columns]
                pm = pm.merge(table[cols], on="broad_sample", how="left")
        pm = pm.rename(columns={c: f"Metadata_{c}" for c in pm.columns})
        pm.insert(0, "Metadata_Well", pm["Metadata_well_position"].str.strip())
        pm.insert(0, "Metadata_Plate", plate)
        pm.insert(2, "Metadata_Plate_Map_Name", name)
        pm["Metadata_modality"] = mod
        parts.append(pm)
    return pd.concat(parts, ignore_index=True).fillna("")


def annotate(profiles: pd.DataFrame, meta_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``profiles`` (with Metadata_Plate, Metadata_Well) + the CPJUMP1 annotations; every well must be mapped."""
    plates = sorted(profiles["Metadata_Plate"].astype(str).unique())
    ann = well_annotations(meta_dir, plates)
    clash = [c for c in ann.columns if c in profiles.columns and c not in ("Metadata_Plate", "Metadata_Well")]
    out = profiles.drop(columns=clash).merge(ann, on=["Metadata_Plate", "Metadata_Well"], how="left",
                                             indicator=True)
    lost = out[out["_merge"] != "both"]
    if len(lost):
        ex = [f"{p}/{w}" for p, w in zip(lost["Metadata_Plate"], lost["Metadata_Well"])][:5]
        raise ProfileError(f"{len(lost)} well(s) are not in their plate's platemap under {meta_dir}: {ex}")
    out = out.drop(columns="_merge")
    meta = [c for c in out.columns if str(c).startswith("Metadata_")]
    return out[meta + [c for c in out.columns if c not in meta]]
